"""The embedded demo zoo: tiny models built from data that ships with a pip dependency, saved,
and then loaded back with ``from_pretrained`` exactly as Hub checkpoints would be.

Under ``accelerate launch`` every process builds the zoo together: the ViT and CLIP builders'
Trainers run under the launcher (its DDP, FSDP or DeepSpeed, its mixed precision, the same global
batch as one process) and save whole weights from the main process; the VQ model's plain loop
runs on every process alike and the main process saves it. Nothing trains while other processes
wait at a barrier, whose collectives would never meet a Trainer's.
"""

from __future__ import annotations

import logging
import os
import random

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from diffusers import VQModel
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from torch.utils.data import DataLoader
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast, Trainer,
                          TrainingArguments, ViTConfig, ViTForImageClassification, ViTImageProcessor, set_seed)

from ..data.datasets import class_names, collate_images, demo_digits, prepare_dataset
from ..methods.dad.discretize import VQDiscretizer
from ..models.loading import whole_weights
from ..models.pixels import PixelPreprocessor
from ..models.prompts import OPENAI_IMAGENET_TEMPLATES
from ..training.config import DistillationConfig
from ..training.launchers import follow_launcher_precision, prepare_fsdp, save_whole_model, vector_scalars
from ..training.trainer import RobustDistillationTrainer

logger = logging.getLogger(__name__)

DEMO_IMAGE_SIZE = 32
DEMO_ZOO = os.path.join("demo_output", "zoo")


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


def per_process_batch(global_batch: int) -> int:
    """A builder's batch per process: its global batch, whatever the number of processes."""
    return max(1, global_batch // PartialState().num_processes)


def demo_vit_arguments(output_dir: str, epochs: int = 10, seed: int = 0, learning_rate: float = 1e-3,
                       **overrides) -> DistillationConfig:
    """The demo ViT's training arguments: supervised training on clean digits."""
    values = dict(
        output_dir=output_dir, distortions="clean", cls_weight=0, patch_weight=0, attn_weight=0, ce_weight=1,
        num_train_epochs=epochs, per_device_train_batch_size=per_process_batch(32), learning_rate=learning_rate,
        weight_decay=0.05, lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=50,
        save_strategy="no", report_to="none", seed=seed, disable_tqdm=True,
        dataloader_pin_memory=torch.accelerator.is_available(),
    )
    return DistillationConfig(**{**values, **overrides})


def build_demo_vit(output_dir: str, epochs: int = 10, seed: int = 0, learning_rate: float = 1e-3, *,
                   image_size: int = DEMO_IMAGE_SIZE, **overrides) -> str:
    """Trains the demo ViT from scratch on clean, upscaled scikit-learn digits and saves it
    (safetensors, config, image processor) to ``output_dir``, which it returns. At another
    ``image_size`` its patches scale with the image: the same 4 x 4 grid of the same digits."""
    digits = demo_digits(seed=seed)
    names = class_names(digits["train"], "label")
    processor = demo_image_processor(image_size)
    args = demo_vit_arguments(output_dir, epochs, seed, learning_rate, **overrides)
    set_seed(seed)
    with whole_weights():  # built whole; DeepSpeed partitions it at its start
        model = ViTForImageClassification(demo_vit_config(names, image_size, patch_size=image_size // 4))
    model.set_attn_implementation("eager")  # on CPUs, eager beats sdpa at this size
    size = (image_size, image_size)
    trainer = RobustDistillationTrainer(model=model, teacher=None, args=args, processing_class=processor,
                                        train_dataset=prepare_dataset(digits["train"], size))
    trainer.train()
    trainer.save_model(output_dir)
    return os.path.abspath(output_dir)


# ---- a tiny CLIP, trained contrastively on digits with captions ----------------------------------

DEMO_CAPTIONS = ("a photo of the digit {}.", "a handwritten {}.", "the number {}.", "a drawing of a {}.")
"""Caption templates of the demo CLIP's training pairs; its zero-shot head uses others too."""


def build_word_tokenizer(texts, max_length: int = 16):
    """A word-level tokenizer over the words of ``texts``, built offline with ``tokenizers``:
    lower-cased, split on whitespace and punctuation, wrapped in ``<|startoftext|>`` and
    ``<|endoftext|>`` as CLIP's is."""
    special = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in splitter.pre_tokenize_str(t.lower())})
    vocab = {token: i for i, token in enumerate(special + words)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = splitter
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=max_length)


def demo_clip_config(tokenizer, image_size: int = DEMO_IMAGE_SIZE, hidden_size: int = 64, vision_layers: int = 3,
                     text_layers: int = 2, heads: int = 4) -> CLIPConfig:
    """A CLIP whose image tower matches the demo ViT (3 blocks, width 64, 8 px patches) and whose
    text tower reads ``tokenizer``'s ids."""
    shared = dict(hidden_size=hidden_size, num_attention_heads=heads, intermediate_size=2 * hidden_size)
    vision = dict(image_size=image_size, patch_size=8, num_hidden_layers=vision_layers, **shared)
    text = dict(vocab_size=len(tokenizer), num_hidden_layers=text_layers, max_position_embeddings=tokenizer.model_max_length,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, **shared)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden_size)


def demo_clip_image_processor(image_size: int = DEMO_IMAGE_SIZE):
    """CLIP's own processor settings (OpenAI mean/std, shortest-edge resize, centre crop) at the demo size."""
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


class CaptionedImages:
    """Collator of (image, caption) pairs: [0, 1] pixels normalised for CLIP, and for each image a
    caption drawn from ``templates`` for its class name."""

    def __init__(self, tokenizer, image_processor, names, templates=DEMO_CAPTIONS, seed: int = 0):
        self.tokenizer, self.names, self.templates = tokenizer, names, templates
        self.pixels = PixelPreprocessor.from_image_processor(image_processor)
        self.rng = random.Random(seed)

    def __call__(self, examples):
        captions = [self.rng.choice(self.templates).format(self.names[e["labels"]]) for e in examples]
        tokens = self.tokenizer(captions, padding=True, return_tensors="pt")
        pixels = torch.stack([e["pixel_values"] for e in examples])
        return {"pixel_values": self.pixels(pixels), "input_ids": tokens["input_ids"],
                "attention_mask": tokens["attention_mask"], "return_loss": True}


def demo_clip_arguments(output_dir: str, epochs: int = 6, seed: int = 0, learning_rate: float = 1e-3,
                        **overrides) -> TrainingArguments:
    """The demo CLIP's training arguments (a plain ``TrainingArguments``, following the launcher's
    mixed precision as ``DistillationConfig`` does)."""
    values = dict(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=per_process_batch(64),
        learning_rate=learning_rate, weight_decay=0.05, lr_scheduler_type="cosine", warmup_steps=0.05,
        logging_steps=50, save_strategy="no", report_to="none", seed=seed, disable_tqdm=True,
        remove_unused_columns=False, dataloader_pin_memory=torch.accelerator.is_available(),
    )
    values.update(overrides)
    values["bf16"], values["fp16"] = follow_launcher_precision(values.get("bf16", False), values.get("fp16", False))
    return TrainingArguments(**values)


def build_demo_clip(output_dir: str, epochs: int = 6, seed: int = 0, learning_rate: float = 1e-3,
                    **overrides) -> str:
    """Trains a tiny CLIP (CLIP's contrastive loss, ``transformers.Trainer``) on clean digits and
    captions such as "a photo of the digit 3.", and saves model, tokenizer and image processor."""
    digits = demo_digits(seed=seed)
    names = class_names(digits["train"], "label")
    vocabulary = [t.format(n) for n in names for t in DEMO_CAPTIONS + OPENAI_IMAGENET_TEMPLATES]
    tokenizer = build_word_tokenizer(vocabulary)
    image_processor = demo_clip_image_processor()
    args = demo_clip_arguments(output_dir, epochs, seed, learning_rate, **overrides)
    set_seed(seed)
    with whole_weights():  # built whole (not half-partitioned by zero.Init); DeepSpeed partitions it at its start
        model = CLIPModel(demo_clip_config(tokenizer))
    model.set_attn_implementation("eager")
    scalars = vector_scalars(model)  # logit_scale, which ZeRO-3 could not partition
    train = prepare_dataset(digits["train"], (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE))
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=CaptionedImages(tokenizer, image_processor, names, seed=seed))
    if trainer.is_fsdp_enabled:
        prepare_fsdp(trainer.accelerator, model, args)
    trainer.train()
    save_whole_model(trainer, output_dir, scalars)  # ZeRO-3 and FSDP weights gathered; written by the main process
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        image_processor.save_pretrained(output_dir)
    return os.path.abspath(output_dir)


# ---- a tiny VQ autoencoder --------------------------------------------------------------------

def demo_vq_model(image_size: int = DEMO_IMAGE_SIZE, num_codes: int = 256, channels=(8, 16, 16)) -> VQModel:
    """A ``diffusers.VQModel`` with a 4x downsampling (32 px images -> 8 x 8 codes of dim 4), narrow
    enough to train on two CPU cores in a minute."""
    return VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
                   up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=tuple(channels),
                   layers_per_block=1, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=num_codes,
                   norm_num_groups=min(channels) // 2, sample_size=image_size, mid_block_add_attention=False)


def build_demo_vq(output_dir: str, epochs: int = 2, seed: int = 0, learning_rate: float = 3e-3,
                  batch_size: int = 32, *, image_size: int = DEMO_IMAGE_SIZE) -> str:
    """Trains the demo VQ model as an autoencoder (L1 reconstruction plus VQ commitment loss) on
    clean digits in [-1, 1] at ``image_size`` pixels a side, and saves it in diffusers format with
    its input range (a plain loop: every process of a launch trains the same copy, the main process
    saves it)."""
    digits = demo_digits(seed=seed)
    train = prepare_dataset(digits["train"], (image_size, image_size))
    set_seed(seed)
    model = demo_vq_model(image_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate_images,
                        generator=torch.Generator().manual_seed(seed))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * len(loader))
    for epoch in range(epochs):
        reconstruction = 0.0
        for batch in loader:
            x = batch["pixel_values"] * 2 - 1
            out = model(x)
            l1 = (out.sample - x).abs().mean()
            (l1 + out.commit_loss.mean()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            reconstruction += l1.item() / len(loader)
        logger.info("demo VQ epoch %d: mean L1 reconstruction error %.4f (in [-1, 1] units)", epoch + 1, reconstruction)
    if PartialState().is_main_process:
        VQDiscretizer(model.eval(), input_range="[-1,1]").save_pretrained(output_dir)
    return os.path.abspath(output_dir)


DEMO_BUILDERS = {"vit": build_demo_vit, "clip": build_demo_clip, "vq": build_demo_vq}


def demo_model(kind: str, zoo_dir: str = DEMO_ZOO, seed: int = 0, **build) -> str:
    """Path of the demo zoo's ``vit``, ``clip`` or ``vq`` model, trained and saved on first use
    (``build``: the builder's own arguments, e.g. ``epochs``). Every process of a launch calls it:
    the main process's look at the zoo decides for all, and all build together."""
    state = PartialState()
    path = os.path.join(zoo_dir, kind)
    missing = [not os.path.exists(os.path.join(path, "config.json"))]
    if state.num_processes > 1:
        broadcast_object_list(missing)
    if missing[0]:
        logger.info("embedded demo: training the tiny %s into %s", kind, path)
        DEMO_BUILDERS[kind](path, seed=seed, **build)
        state.wait_for_everyone()
    return os.path.abspath(path)
