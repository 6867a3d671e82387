"""Every shell command and Python block of README.md and docs/, run as written, offline on a CPU.

Hub ids, placeholders (``<imagenet-1k on the Hub>``) and the local folders the docs name
(``vqgan-openimages-f8-16384``, ``my-student``) are stood in for by tiny models and the digits, kept
where a user's machine would hold them: substituted in the commands and in the YAML recipes they
read, the folders made in the command's working folder. Then:

- a recipe command (``python recipes/X.py`` or ``accelerate launch ... recipes/X.py``) runs through
  everything it checks before its first step: every flag and YAML key, the checkpoints, the data and
  its decoded evaluation split. It must find no problem but those a CPU gives (``--bf16``). The
  training itself needs the GPU and the data the command names; the suite's recipe tests train on
  tiny stand-ins. A launcher's ``--config_file`` must load as accelerate loads it. A command whose
  flags end in ``...`` (the flags above, abbreviated) has its flags parsed;
- the VQGAN converter converts a tiny taming checkpoint written where the docs put theirs;
- a Python block is executed, its undefined inputs (``model``, ``class_names``) bound to stand-ins.

A block this file does not know fails the test until it is run here or skipped with its reason, so
the docs cannot drift from the code again."""

import glob
import os
import re
import shlex
from dataclasses import dataclass

import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Image as ImageFeature

from hf_robust_distill.data import demo_digits, imagenet_classes
from hf_robust_distill.evaluation.natural_shifts import CLASS_SUBSETS
from hf_robust_distill.utils import PreflightError
from tests.conftest import load_recipe, save_tiny_classifier, save_tiny_clip, save_tiny_vq
from tests.convert.test_vqgan import taming_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

SKIPPED = {
    "make demo": "runs the two recipes on their embedded default for minutes; tests/cli/test_recipes.py runs "
                 "them on tiny models",
    "pip install": "installs packages",
    "echo /.whl/": "prepares wheels for the GPU machine, from the package registry",
    "from transformers import AutoImageProcessor\nfrom hf_robust_distill import (DistillationConfig":
        "README's quickstart block: tests/test_readme.py runs it as written",
}
"""Commands or blocks not run here, by how they begin, with why."""


@dataclass
class Block:
    doc: str
    language: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.doc}: {self.text.strip().splitlines()[0][:70]}"


def doc_blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        text = open(os.path.join(ROOT, doc)).read()
        found += [Block(doc, lang, body) for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
                  if lang in ("bash", "python")]
    return found


def shell_commands(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            commands.append(line)
    return commands


def skip_reason(text: str) -> str | None:
    return next((why for start, why in SKIPPED.items() if text.strip().startswith(start)), None)


# ---------------------------------------------------------------- the stand-ins


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny models and data standing in for everything the docs name; returns (substitutions, cwd)."""
    root = tmp_path_factory.mktemp("docs-world")
    cwd = root / "cwd"
    cwd.mkdir()
    digits = demo_digits()
    splits = {"train": digits["train"].select(range(40)), "validation": digits["test"].select(range(16)),
              "test": digits["test"].select(range(16, 32))}
    data = str(root / "digits")
    DatasetDict(splits).save_to_disk(data)
    vit, clip = save_tiny_classifier(root / "vit", "vit"), save_tiny_clip(root / "clip")
    for local in ("vit-b16-dad", "my-student"):  # folders the docs name as made by an earlier command
        save_tiny_classifier(cwd / local, "vit")
    save_tiny_vq(cwd / "vqgan-openimages-f8-16384")
    save_tiny_vq(root / "kandinsky" / "movq")
    released = root / "ImageNet-C" / "contrast" / "1" / imagenet_classes()[0][0]  # the release's layout
    released.mkdir(parents=True)
    digits["test"][0]["image"].convert("RGB").resize((224, 224)).save(released / "ILSVRC2012_val_00000001.JPEG")
    taming_layout(cwd, "taming.models.vqgan.VQModel", [1, 2], [], 64)  # the docs' model.ckpt and config.yaml
    substitutions = {
        "<imagenet-1k on the Hub>": data, "<imagenet-a on the Hub>": data, "axiong/imagenet-r": data,
        "clane9/imagenet-100": data, "uoft-cs/cifar10": data, "my/data": data,
        "google/vit-base-patch16-224-in21k": vit, "google/vit-base-patch16-224": vit,
        "facebook/dinov2-base": save_tiny_classifier(root / "dinov2", "dinov2"),
        "facebook/deit-small-patch16-224": save_tiny_classifier(root / "deit", "deit"),
        "openai/clip-vit-large-patch14": clip, "kandinsky-community/kandinsky-2-2-decoder": str(root / "kandinsky"),
        "/data/ImageNet-C": str(root / "ImageNet-C"), "<its licence>": "apache-2.0",
    }
    return substitutions, cwd


def stand_in(text: str, substitutions: dict[str, str]) -> str:
    for name in sorted(substitutions, key=len, reverse=True):  # the longest first: an id inside another
        text = text.replace(name, substitutions[name])
    return text


# ---------------------------------------------------------------- running a command


def run_command(command: str, world, tmp_path) -> None:
    substitutions, cwd = world
    tokens = shlex.split(stand_in(command, substitutions))
    if tokens[:2] == ["accelerate", "launch"]:
        tokens = launched_script(tokens[2:])
    if tokens[:3] == ["python", "-m", "hf_robust_distill.convert_vqgan"]:
        return run_converter(tokens[3:], cwd, tmp_path)
    if tokens[:3] == ["python", "-m", "hf_robust_distill.convert_checkpoint"]:
        return run_checkpoint_converter(tokens[3:], cwd)
    assert tokens[0] == "python" and tokens[1].startswith("recipes/"), f"no runner for {command!r}"
    run_recipe_checks(os.path.basename(tokens[1])[:-3], tokens[2:], substitutions, tmp_path)


def launched_script(tokens: list[str]) -> list[str]:
    """``accelerate launch``'s own flags checked (its ``--config_file`` loads), the script's command
    returned."""
    from accelerate.commands.config.config_args import load_config_from_file

    while tokens and tokens[0].startswith("--"):
        flag = tokens.pop(0)
        value = tokens.pop(0)
        if flag == "--config_file":
            load_config_from_file(os.path.join(ROOT, value))
    return ["python", *tokens]


def run_recipe_checks(recipe: str, argv: list[str], substitutions: dict, tmp_path) -> None:
    """The recipe's checks before its first step (its flags only, for an abbreviated command): no
    problem but those a CPU gives."""
    argv = [os.path.join(ROOT, a) if a.startswith("recipes/configs/") else a for a in argv]
    asks_bf16 = "--bf16" in argv
    if "--config" in argv:
        at = argv.index("--config") + 1
        settings = yaml.safe_load(open(argv[at]))
        asks_bf16 = asks_bf16 or bool(settings.get("bf16"))
        argv[at] = str(tmp_path / os.path.basename(argv[at]))
        with open(argv[at], "w") as f:
            f.write(stand_in(yaml.safe_dump(settings), substitutions))
    argv += ["--corruption_cache_dir", str(tmp_path / "corrupted")]
    module = load_recipe(recipe)
    abbreviated = "..." in argv
    if abbreviated:
        argv.remove("...")
    if "--baseline_report" in argv:
        make_baseline_report(module, argv, substitutions)
    try:
        if abbreviated:
            module.parse_args(argv)
        else:
            assert module.preflight(argv).data.evaluation is not None  # checked through its decoded split
        found = set()
    except PreflightError as error:
        found = {where for where, _ in error.problems}
        details = str(error)
    expected = {"--bf16"} if asks_bf16 and not torch.cuda.is_available() else set()
    assert found == expected, details if found else f"expected {expected}"


def make_baseline_report(module, argv: list[str], substitutions: dict) -> None:
    """The report a ``--baseline_report`` names, made as a user makes it: the same evaluation of the
    baseline model (a cheap one: the checks compare images, seed and protocol, not corruptions)."""
    at = argv.index("--baseline_report") + 1
    kept = [a for i, a in enumerate(argv) if i not in (at - 1, at)]
    model = kept.index("--model_name_or_path") + 1
    kept[model] = substitutions["google/vit-base-patch16-224"]
    module.main(kept + ["--output_dir", os.path.dirname(argv[at]), "--robustness_corruptions", "contrast",
                        "--robustness_severities", "1", "--device", "cpu"])


def run_converter(argv: list[str], cwd, tmp_path) -> None:
    """Converted for real where the docs' files stand in cwd; the shipped full-size config is read
    and mapped (converting its 16384-code model from random weights here would take minutes)."""
    from hf_robust_distill.convert.vqgan import main as convert_main
    from hf_robust_distill.convert.vqgan import diffusers_config, read_config

    if argv[1].startswith("recipes/configs/"):
        assert diffusers_config(read_config(os.path.join(ROOT, argv[1])))["num_vq_embeddings"] == 16384
        return
    out = tmp_path / "converted"
    convert_main([str(cwd / argv[0]), str(cwd / argv[1]), str(out), *argv[3:]])
    assert os.path.isfile(out / "vq_discretizer.json")


PUBLISHED = {"vit_b16_base.pth": ("vit", "raw"), "resnet50_dad.pth": ("resnet", "dad"),
             "robustbench_resnet50.pt": ("resnet", "robustbench"), "model_best.pth.tar": ("vit", "ema"),
             "swin_model_best.pth.tar": ("convnext_atto", "ema")}
"""The published checkpoints the docs name: a tiny model of the family, saved in the file's layout."""


def run_checkpoint_converter(argv: list[str], cwd) -> None:
    """A tiny model saved in the named file's layout where the docs put it, converted for real as the
    command says, its named architecture checked to be of that family and stood in for by it (a
    full-size ViT-B/16 from random weights would take minutes here)."""
    import shutil

    from hf_robust_distill.convert.architectures import resolve_architecture
    from hf_robust_distill.convert.checkpoint import main as convert_main
    from tests.convert.test_checkpoint import save_layout, tiny_resnet, tiny_timm_vit

    family, layout = PUBLISHED[argv[0]]
    at = argv.index("--architecture") + 1
    if family == "convnext_atto":  # any timm model, written as a TimmWrapper folder
        import timm

        assert resolve_architecture(argv[at], prefer_timm=True).library == "timm"
        model, argv[at] = timm.create_model("convnext_atto", num_classes=10).eval(), "convnext_atto"
    else:
        assert resolve_architecture(argv[at]).family == family
        model = tiny_timm_vit() if family == "vit" else tiny_resnet("timm", "bottleneck")
        argv[at:at + 1] = [family, "--num_heads", "2"] if family == "vit" else [family]
    source = save_layout(model, cwd / f".{argv[0]}", layout)
    shutil.move(source, cwd / argv[0])
    shutil.rmtree(cwd / argv[1], ignore_errors=True)
    convert_main([str(cwd / argv[0]), str(cwd / argv[1]), *argv[2:], "--class_names", ",".join(map(str, range(10)))])
    assert os.path.isfile(cwd / argv[1] / "conversion.json")


# ---------------------------------------------------------------- running a Python block


def run_python(block: Block, world, tmp_path, monkeypatch) -> None:
    substitutions = dict(world[0])
    monkeypatch.chdir(tmp_path)
    namespace = python_inputs(block, substitutions, tmp_path)
    exec(compile(stand_in(block.text, substitutions), block.doc, "exec"), namespace)


def python_inputs(block: Block, substitutions: dict, tmp_path) -> dict:
    """The names a block uses without defining them, bound to stand-ins."""
    if "generate_dad_dataset" in block.text:
        digits = demo_digits()["train"].select(range(8))
        return {"class_names": digits.features["label"].names, "train_split": digits}
    if "evaluate_robustness(model, eval_split" in block.text:
        from transformers import AutoModelForImageClassification

        from hf_robust_distill import evaluate_robustness

        model = AutoModelForImageClassification.from_pretrained(imagenet_classifier(tmp_path / "imagenet-vit"))
        wnids = [wnid for wnid, _, _ in imagenet_classes()]  # an imagefolder of ImageNet names its classes so
        eval_split = imagenet_images([0, 1, 2, 3], wnids)
        subset = [wnids[i] for i in CLASS_SUBSETS["imagenet-r"]]
        DatasetDict(test=imagenet_images([0, 1], subset)).save_to_disk(substitutions["axiong/imagenet-r"] + "-r")
        substitutions["axiong/imagenet-r"] = substitutions["axiong/imagenet-r"] + "-r"
        teacher_report = evaluate_robustness(model, eval_split, baseline="alexnet", progress=False,
                                             cache_dir=str(tmp_path / "teacher-cache"))
        return {"model": model, "eval_split": eval_split, "teacher_report": teacher_report}
    return {}


def imagenet_classifier(path) -> str:
    """A tiny ViT with ImageNet-1k's 1,000 classes (ImageNet-C's protocol and the natural shifts'
    class subsets apply to it)."""
    from transformers import ViTConfig, ViTForImageClassification

    from hf_robust_distill.cli import demo_image_processor
    from tests.conftest import TINY_BLOCKS

    names = [n for _, _, n in imagenet_classes()]
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(**TINY_BLOCKS, num_labels=1000, id2label=dict(enumerate(names)),
                                        label2id={n: i for i, n in enumerate(names)})).save_pretrained(path)
    demo_image_processor().save_pretrained(path)
    return str(path)


def imagenet_images(labels: list[int], names: list[str]) -> Dataset:
    """Digits at 64 px labelled with ``names``' classes."""
    digits = demo_digits()["test"].select(range(len(labels)))
    images = [image.convert("RGB").resize((64, 64)) for image in digits["image"]]
    return Dataset.from_dict({"image": images, "label": labels}).cast_column("image", ImageFeature()).cast_column(
        "label", ClassLabel(names=names))


# ---------------------------------------------------------------- the tests

BLOCKS = doc_blocks()


def test_every_block_of_the_docs_is_found():
    assert {b.doc for b in BLOCKS} >= {"README.md", "docs/dad.md", "docs/robustness-and-hub.md", "docs/multi-gpu.md"}
    assert sum(b.language == "python" for b in BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_the_block_runs_as_written(block, world, tmp_path, monkeypatch):
    if skip_reason(block.text):
        return
    if block.language == "python":
        return run_python(block, world, tmp_path, monkeypatch)
    monkeypatch.chdir(world[1])
    ran = 0
    for command in shell_commands(block.text):
        if skip_reason(command) is None:
            run_command(command, world, tmp_path)
            ran += 1
    assert ran or all(skip_reason(c) for c in shell_commands(block.text))
