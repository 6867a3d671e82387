import importlib.util
import os
import socket
import sys
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from accelerate import debug_launcher  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402
from accelerate.utils import patch_environment  # noqa: E402
from transformers import CLIPModel  # noqa: E402
from transformers import ViTForImageClassification  # noqa: E402

from hf_robust_distill.cli import (DEMO_CAPTIONS, build_word_tokenizer, demo_clip_config, demo_clip_image_processor,
                                   demo_image_processor, demo_vit_config, demo_vq_model)
from hf_robust_distill.data import demo_digits, prepare_dataset
from hf_robust_distill.methods.dad import VQDiscretizer

torch.set_flush_denormal(True)
DIGIT_NAMES = [str(i) for i in range(10)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_recipe(name: str):
    """A script of ``recipes/`` as a module, so a test can call its ``main(argv)``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "..", "recipes",
                                                                      f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_in_two_processes(function, *args) -> None:
    """Runs ``function(*args)`` in two processes forked from this one and joined in a gloo process
    group (``accelerate.debug_launcher``); an exception in either is raised here. A fork inherits this
    interpreter's imports, which spares the minutes two fresh interpreters (torchrun) take on a
    2-core machine; the DDP and collective code under test is the same.

    Each process keeps to one thread: a fork inherits the parent's OpenMP pool without its threads, and
    a parallel region there waits for them forever. OMP_NUM_THREADS tells accelerate not to raise the
    count when it sets up the process group."""
    with patch_environment(omp_num_threads=1):
        debug_launcher(partial(_in_forked_process, function), args=args, num_processes=2)


def _in_forked_process(function, *args) -> None:
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)  # the parent's state describes one process
    GradientState._reset_state()
    function(*args)


def save_tiny_vit(path, seed=0, **overrides) -> str:
    """A 2-block ViT of width 32 on 32 px images with 8 px patches, saved with its processor."""
    values = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8)
    values.update(overrides)
    torch.manual_seed(seed)
    ViTForImageClassification(demo_vit_config(DIGIT_NAMES, **values)).save_pretrained(path)
    demo_image_processor().save_pretrained(path)
    return str(path)


TINY_BLOCKS = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64)


def save_tiny_classifier(path, arch: str, seed: int = 0, **overrides) -> str:
    """A 2-block ViT-family image classifier (``vit``, ``deit``, ``dinov2`` or ``clip``) of width
    32 on 32 px digits, saved with the demo's image processor."""
    from transformers import (CLIPConfig, CLIPForImageClassification, DeiTConfig, DeiTForImageClassification,
                              Dinov2Config, Dinov2ForImageClassification, ViTConfig)

    labels = dict(num_labels=10, id2label=dict(enumerate(DIGIT_NAMES)),
                  label2id={n: i for i, n in enumerate(DIGIT_NAMES)})
    blocks = {**TINY_BLOCKS, **overrides}
    model_class, config = {
        "vit": (ViTForImageClassification, lambda: ViTConfig(**blocks, **labels)),
        "deit": (DeiTForImageClassification, lambda: DeiTConfig(**blocks, **labels)),
        "dinov2": (Dinov2ForImageClassification, lambda: Dinov2Config(**blocks, **labels)),
        "clip": (CLIPForImageClassification, lambda: CLIPConfig(vision_config=blocks, **labels)),
    }[arch]
    torch.manual_seed(seed)
    model_class(config()).save_pretrained(path)
    demo_image_processor().save_pretrained(path)
    return str(path)


TIMM_TINY = {"vit": ("vit_tiny_patch16_224", dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8)),
             "deit": ("deit_tiny_patch16_224", dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8)),
             "resnet": ("resnet18", dict(layers=(1, 1, 1, 1)))}


def save_tiny_timm(path, arch: str = "vit", seed: int = 0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                   **overrides) -> str:
    """A tiny timm model (a 2-block ViT of width 32 on 32 px digits with 8 px patches, a DeiT, or a
    one-block-per-stage ResNet-18) in the Hub's timm format: ``config.json`` with its architecture,
    ``model_args`` and ``pretrained_cfg`` (the evaluation transform), as
    ``AutoModelForImageClassification.from_pretrained("timm/<name>")`` reads it."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    architecture, model_args = TIMM_TINY[arch]
    config = TimmWrapperConfig(
        architecture=architecture, model_args={**model_args, **overrides}, num_labels=10,
        id2label=dict(enumerate(DIGIT_NAMES)), label2id={n: i for i, n in enumerate(DIGIT_NAMES)},
        pretrained_cfg=dict(input_size=[3, 32, 32], interpolation="bicubic", crop_pct=1.0, crop_mode="center",
                            mean=list(mean), std=list(std)))
    torch.manual_seed(seed)
    TimmWrapperForImageClassification(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_timm_vit(tmp_path_factory) -> str:
    return save_tiny_timm(tmp_path_factory.mktemp("tiny-timm-vit"))


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> str:
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def digits():
    """Small train and eval splits of scikit-learn's digits, decoded at 32 px."""
    data = demo_digits()
    return (prepare_dataset(data["train"].select(range(64)), (32, 32)),
            prepare_dataset(data["test"].select(range(32)), (32, 32)))


def save_tiny_clip(path) -> str:
    """A randomly initialised CLIP (towers of width 32, 2 blocks) with a word-level tokenizer
    built offline and CLIP's image processor, saved as a Hub checkpoint would be."""
    tokenizer = build_word_tokenizer([t.format(n) for n in DIGIT_NAMES for t in DEMO_CAPTIONS])
    torch.manual_seed(0)
    model = CLIPModel(demo_clip_config(tokenizer, hidden_size=32, vision_layers=2, text_layers=2, heads=2))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    demo_clip_image_processor().save_pretrained(path)
    return str(path)


def save_tiny_vq(path) -> str:
    """A randomly initialised 4x-downsampling VQ model in diffusers format, input range [-1, 1]."""
    torch.manual_seed(0)
    VQDiscretizer(demo_vq_model(num_codes=64), input_range="[-1,1]").save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_vq(tmp_path_factory) -> str:
    return save_tiny_vq(tmp_path_factory.mktemp("tiny-vq"))


@pytest.fixture
def local_hub(monkeypatch):
    """A Hub on loopback that ``huggingface_hub`` and ``datasets`` reach through ``HF_ENDPOINT``.
    Both read the endpoint and offline flag when imported, so ``huggingface_hub.constants`` is
    reloaded with the test's environment (and again afterwards) and ``datasets.config`` patched. Xet is
    turned off so that large files take the LFS route the local hub speaks."""
    import importlib

    from datasets import config as datasets_config
    from huggingface_hub import constants

    from tests.local_hub import LocalHub

    with LocalHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_TOKEN", "hf_localtesttoken1234")
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", hub.url)
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
        importlib.reload(constants)
        try:
            yield hub
        finally:
            monkeypatch.undo()
            importlib.reload(constants)


@pytest.fixture(scope="session")
def photo():
    """scikit-image's astronaut, a real photo, at 224 px: (PIL image, (1, 3, 224, 224) tensor)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((224, 224), Image.BILINEAR)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    return image, tensor


PHOTO_CLASSES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}


def write_photo_folder(root, per_class=(12, 4), classes=("cat", "coffee"), seed=0) -> str:
    """An imagefolder (train/ and test/, one folder per class) of JPEG crops of scikit-image's
    sample photos, of varied sizes and aspect ratios, as a user's own data would be."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for name in classes:
            photo = getattr(skimage.data, PHOTO_CLASSES[name])()
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                h, w = int(rng.integers(48, 120)), int(rng.integers(48, 120))
                y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
                Image.fromarray(photo[y:y + h, x:x + w]).save(os.path.join(root, split, name, f"{i}.jpg"))
    return str(root)


def pipeline_accuracy(model: str, folder: str) -> tuple[float, list[str]]:
    """Top-1 accuracy of plain ``pipeline("image-classification")`` on the test files of an image
    folder, read by path as a user would; and its predictions."""
    import numpy as np
    from transformers import pipeline

    from hf_robust_distill.data import load_image_dataset

    classify = pipeline("image-classification", model=str(model), device="cpu")
    test = load_image_dataset(folder)["test"]
    names = test.features["label"].names
    files = [row["path"] for row in test.cast_column("image", test.features["image"].__class__(decode=False))["image"]]
    predictions = [classify(path, top_k=1)[0]["label"] for path in files]
    return float(np.mean([p == names[y] for p, y in zip(predictions, test["label"])])), predictions


def truncate(path, keep: float = 0.5) -> str:
    """Cuts a file short, as an interrupted download leaves it."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    return str(path)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> str:
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


def recipe_argv(teacher, output_dir, cache_dir, *extra) -> list[str]:
    """A short, CPU-only run of a training recipe: a few steps, two corruptions, no checkpoints."""
    return ["--teacher_name_or_path", str(teacher), "--output_dir", str(output_dir), "--max_steps", "3",
            "--per_device_train_batch_size", "8", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
            "--disable_tqdm", "true", "--logging_steps", "1", "--robustness_corruptions", "gaussian_noise,contrast",
            "--robustness_severities", "1,3", "--corruption_cache_dir", str(cache_dir), *extra]


def save_image_dataset(path, splits: dict) -> str:
    """A dataset saved with save_to_disk, from {split: (images, labels, label feature or None)}."""
    from datasets import Dataset, DatasetDict, Image as ImageFeature

    parts = {}
    for name, (images, labels, feature) in splits.items():
        part = Dataset.from_dict({"image": images, "label": labels}).cast_column("image", ImageFeature())
        parts[name] = part.cast_column("label", feature) if feature is not None else part
    DatasetDict(parts).save_to_disk(str(path))
    return str(path)
