"""``--help`` of every command a user can type: each recipe and each ``python -m hf_robust_distill...``
module, found from the files (a new one is covered without being listed here), run as a user runs
it; and every argument dataclass's help formats, whatever its texts hold."""

import ast
import dataclasses
import importlib
import os
import pkgutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

import hf_robust_distill
from hf_robust_distill.cli.recipe_parser import DATA, EVALUATION, HUB, TRAINING, RecipeArgumentParser, escape_percent

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.dirname(hf_robust_distill.__file__)


def runs_as_main(path: str) -> bool:
    """Whether the file has an ``if __name__ == "__main__":`` block at its top level."""
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
            return True
    return False


def entry_points() -> dict[str, list[str]]:
    """Each command's name and the argv that runs it: ``python recipes/X.py`` for every recipe, and
    ``python -m M`` for every package module that runs as main (a ``__main__.py`` names its package)."""
    commands = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "recipes"))):
        path = os.path.join(ROOT, "recipes", name)
        if name.endswith(".py") and runs_as_main(path):
            commands[f"recipes/{name}"] = [sys.executable, path]
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.endswith(".py") or not (name == "__main__.py" or runs_as_main(path)):
                continue
            parts = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].split(os.sep)
            module = ".".join(parts[:-1] if name == "__main__.py" else parts)
            commands[f"python -m {module}"] = [sys.executable, "-m", module]
    return commands


COMMANDS = entry_points()


def test_the_entry_points_are_found_from_the_files():
    assert {"recipes/dad.py", "recipes/multilevel.py", "recipes/evaluate_robustness.py", "recipes/demo.py",
            "python -m hf_robust_distill.hub", "python -m hf_robust_distill.convert_vqgan",
            "python -m hf_robust_distill.convert_checkpoint"} <= set(COMMANDS)


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, list[str]]]:
    """Every command's ``--help``, run side by side (each imports torch and transformers), each in
    an empty folder of its own, which ``--help`` must leave empty."""
    running = {}
    for name, argv in COMMANDS.items():
        cwd = tmp_path_factory.mktemp("help")
        env = {**os.environ, "PYTHONPATH": ROOT}
        running[name] = (subprocess.Popen([*argv, "--help"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True), cwd)
    done = {}
    for name, (process, cwd) in running.items():
        out, err = process.communicate(timeout=600)
        done[name] = (subprocess.CompletedProcess(process.args, process.returncode, out, err), os.listdir(cwd))
    return done


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_exits_0_prints_the_flags_and_does_no_work(helps, command):
    result, left = helps[command]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage:") and "-h, --help" in result.stdout
    assert "Traceback" not in result.stderr
    assert left == [], f"{command} --help wrote {left}"


@pytest.mark.parametrize("recipe", ["recipes/dad.py", "recipes/multilevel.py", "recipes/evaluate_robustness.py"])
def test_a_recipes_help_groups_its_flags_by_what_they_are_for(helps, recipe):
    text = helps[recipe][0].stdout
    assert "docs/flags.md" in text.split("options:")[0]  # above the first flag
    headings = [line[:-1] for line in text.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    closing = [EVALUATION, HUB] + ([TRAINING] if recipe != "recipes/evaluate_robustness.py" else [])
    assert headings[:2] == ["options", DATA] and headings[-len(closing):] == closing, headings
    assert "--dataset_name" in section(text, DATA) and "--robustness_corruptions" in section(text, EVALUATION)
    if recipe != "recipes/evaluate_robustness.py":
        hub = section(text, HUB)
        assert hub.index("--force_push") < hub.index("--push_to_hub")  # the package's own flags first
        method = section(text, "the method: DistillationConfig")
        assert "--dad_mode" in method and "--learning_rate" not in method
        assert "--learning_rate" in section(text, TRAINING) and "--teacher_name_or_path" not in section(text, TRAINING)


def section(text: str, title: str) -> str:
    return text.split(f"\n{title}:\n")[1].split("\n\n")[0]


def test_the_help_shows_the_methods_defaults_not_the_demos(helps):
    dad = section(helps["recipes/dad.py"][0].stdout, TRAINING)
    learning_rate = dad.split("--learning_rate")[1].split("--")[0]
    assert "(default: 0.002)" in " ".join(learning_rate.split())  # DAD's, where the demo's is 5e-4
    assert "demo_output" not in helps["recipes/dad.py"][0].stdout


def argument_dataclasses() -> list[type]:
    """Every dataclass of the package whose fields carry help texts: those the recipes parse, and any
    added later."""
    found = {}
    for info in pkgutil.walk_packages(hf_robust_distill.__path__, "hf_robust_distill."):
        if info.name.endswith("__main__") or ".metrics." in info.name:
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == info.name
                    and any("help" in f.metadata for f in dataclasses.fields(value))):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


def test_every_argument_dataclass_formats_its_help():
    types = argument_dataclasses()
    names = {t.__name__ for t in types}
    assert {"DataArguments", "RobustnessArguments", "DistillationConfig", "EvaluateArguments"} <= names, names
    for dtype in types:
        text = RecipeArgumentParser([dtype]).format_help()
        assert all(f"--{f.name}" in text for f in dataclasses.fields(dtype) if f.init)


def test_a_percent_in_a_help_text_prints_as_written():
    @dataclass
    class Arguments:
        share: float = field(default=0.1, metadata={"help": "10% of train, then 5 %o more; 100%% sure."})
        named: int = field(default=3, metadata={"help": "Three by default: %(default)s."})

    text = " ".join(RecipeArgumentParser([Arguments]).format_help().split())
    assert "10% of train, then 5 %o more; 100% sure. (default: 0.1)" in text
    assert "Three by default: 3." in text and "(default: 3)" not in text  # argparse adds none: it has one
    assert escape_percent("a %(default)s b % c %% d") == "a %(default)s b %% c %% d"


def test_the_grouped_parser_parses_as_hfargumentparser_does():
    from transformers import HfArgumentParser

    from hf_robust_distill.cli import DataArguments, RobustnessArguments

    argv = ["--dataset_name", "x", "--eval-split", "validation", "--robustness_severities", "1,3", "--force_push"]
    ours = RecipeArgumentParser([DataArguments, RobustnessArguments]).parse_args_into_dataclasses(argv)
    theirs = HfArgumentParser([DataArguments, RobustnessArguments]).parse_args_into_dataclasses(argv)
    assert ours == theirs and ours[0].eval_split == "validation" and ours[1].force_push
