"""The package's rooms: each import runs down the image's path (no circle, no import of a later
room), and each room's face re-exports its names."""

import ast
import os

import pytest

import hf_robust_distill

PACKAGE = os.path.dirname(hf_robust_distill.__file__)
ORDER = ["utils", "data", "views", "models", "methods", "convert", "training", "evaluation", "hub", "cli"]


def imported_rooms(path: str) -> list[tuple[int, str]]:
    """(line, room) of every import of the package in ``path``, lazy ones included."""
    here = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)[:-1]
    found = []
    for node in ast.walk(ast.parse(open(path).read())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            module = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
        elif node.module and node.module.startswith("hf_robust_distill."):
            module = node.module.split(".")[1:]
        else:
            continue
        if module and module[0] in ORDER:
            found.append((node.lineno, module[0]))
    return found


def test_every_import_runs_down_the_image_path():
    upward = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(folder, name)
            room = os.path.relpath(path, PACKAGE).split(os.sep)[0]
            if not name.endswith(".py") or room not in ORDER:
                continue
            upward += [f"{os.path.relpath(path, PACKAGE)}:{line} imports {other}"
                       for line, other in imported_rooms(path) if ORDER.index(other) > ORDER.index(room)]
    assert not upward, upward


@pytest.mark.parametrize("room", ORDER)
def test_each_room_is_a_face_with_a_two_line_docstring(room):
    face = __import__(f"hf_robust_distill.{room}", fromlist=["__all__"])
    assert face.__doc__ and len(face.__doc__.strip().splitlines()) == 2
    assert all(hasattr(face, name) for name in getattr(face, "__all__", []))


def module_level_imports(module: str) -> set[str]:
    """The package modules ``module`` imports when it is imported (not inside its functions)."""
    path = os.path.join(PACKAGE, *module.split(".")) + ".py"
    if not os.path.isfile(path):
        path = os.path.join(PACKAGE, *module.split("."), "__init__.py")
    here = module.split(".")[:-1] if not path.endswith("__init__.py") else module.split(".")
    found = set()
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join(base + [alias.name])
                is_module = any(os.path.exists(os.path.join(PACKAGE, *candidate.split(".")) + suffix)
                                for suffix in (".py", os.sep + "__init__.py"))
                found.add(candidate if is_module else ".".join(base))
    return found


def test_the_config_imports_no_module_that_loads_data_or_models():
    """``DistillationConfig`` reads flags: importing its module reaches the concerns' checks, never the
    loading of datasets or checkpoints, DAD generation, evaluation, the Hub or the recipes."""
    seen, todo = set(), ["training.config"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(module_level_imports(module))
    loaders = {"data.datasets", "models.loading", "models.zero_shot", "methods.dad.offline",
               "methods.dad.discretize", "training.trainer"}
    assert not seen & loaders, sorted(seen & loaders)
    assert not {m for m in seen if m.split(".")[0] in ("evaluation", "hub", "cli")}


MAX_LINES, MAX_POSITIONAL = 60, 8


def test_no_function_is_over_60_lines_or_takes_over_8_positional_parameters():
    """A function longer than a screen, or a call that reads as a row of unnamed values, is a cut not
    yet made: keyword-only parameters (after ``*``) name themselves; self and cls are not counted."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path).read())):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                where = f"{os.path.relpath(path, PACKAGE)}:{node.lineno} {node.name}"
                lines = node.end_lineno - node.lineno + 1
                positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                if lines > MAX_LINES:
                    found.append(f"{where}: {lines} lines")
                if len(positional) > MAX_POSITIONAL:
                    found.append(f"{where}: {len(positional)} positional parameters")
    assert not found, found

