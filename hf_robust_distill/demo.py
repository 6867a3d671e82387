"""The embedded demo zoo: tiny models built from data that ships with a pip dependency, saved,
and then loaded back with ``from_pretrained`` exactly as Hub checkpoints would be."""

from __future__ import annotations

import os

from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from .config import DistillationConfig
from .data import class_names, demo_digits, prepare_dataset
from .trainer import RobustDistillationTrainer

DEMO_IMAGE_SIZE = 32


def demo_vit_config(label_names: list[str], image_size: int = DEMO_IMAGE_SIZE, **overrides) -> ViTConfig:
    """A ViT small enough to train on two CPU cores in minutes: 3 blocks of width 64, 8 px patches."""
    values = dict(image_size=image_size, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=3,
                  num_attention_heads=4, intermediate_size=128, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, num_labels=len(label_names),
                  id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    values.update(overrides)
    return ViTConfig(**values)


def demo_image_processor(image_size: int = DEMO_IMAGE_SIZE) -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": image_size, "width": image_size},
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def build_demo_vit(output_dir: str, epochs: int = 15, seed: int = 0, learning_rate: float = 1e-3) -> str:
    """Trains the demo ViT from scratch on clean, upscaled scikit-learn digits and saves it
    (safetensors, config, image processor) to ``output_dir``, which it returns."""
    digits = demo_digits(seed=seed)
    names = class_names(digits["train"], "label")
    processor = demo_image_processor()
    model = ViTForImageClassification(demo_vit_config(names))
    model.set_attn_implementation("eager")  # on CPUs, eager beats sdpa at this size
    args = DistillationConfig(
        output_dir=output_dir, distortions="clean", cls_weight=0, patch_weight=0, attn_weight=0, ce_weight=1,
        num_train_epochs=epochs, per_device_train_batch_size=32, learning_rate=learning_rate,
        weight_decay=0.05, lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=50,
        save_strategy="no", report_to="none", seed=seed, disable_tqdm=True,
    )
    size = (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE)
    trainer = RobustDistillationTrainer(model=model, teacher=None, args=args, processing_class=processor,
                                        train_dataset=prepare_dataset(digits["train"], size))
    trainer.train()
    trainer.save_model(output_dir)
    return os.path.abspath(output_dir)
