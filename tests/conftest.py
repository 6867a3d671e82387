import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import ViTForImageClassification  # noqa: E402

from hf_robust_distill.data import demo_digits, prepare_dataset  # noqa: E402
from hf_robust_distill.demo import demo_image_processor, demo_vit_config  # noqa: E402

torch.set_flush_denormal(True)
DIGIT_NAMES = [str(i) for i in range(10)]


def save_tiny_vit(path, seed=0, **overrides) -> str:
    """A 2-block ViT of width 32 on 32 px images with 8 px patches, saved with its processor."""
    values = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8)
    values.update(overrides)
    torch.manual_seed(seed)
    ViTForImageClassification(demo_vit_config(DIGIT_NAMES, **values)).save_pretrained(path)
    demo_image_processor().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> str:
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def digits():
    """Small train and eval splits of scikit-learn's digits, decoded at 32 px."""
    data = demo_digits()
    return (prepare_dataset(data["train"].select(range(64)), (32, 32)),
            prepare_dataset(data["test"].select(range(32)), (32, 32)))
