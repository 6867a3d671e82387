"""``CLIPZeroShotClassifier``: a CLIP image tower with a zero-shot text head, used as a teacher.

DAD's teacher is CLIP used as a classifier: each class name is written into prompt templates,
the text embeddings are L2-normalised, averaged over templates and re-normalised; times
``logit_scale.exp()`` they form a linear head on the L2-normalised image embedding. The head is
computed once; afterwards only the image tower runs.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection,
                          logging as hf_logging)

from ..data.imagenet_classes import zero_shot_names
from .loading import load_vision_model
from .pixels import PixelPreprocessor, PixelSpaceClassifier
from .prompts import resolve_templates

HEAD_WEIGHTS = "zero_shot_head.safetensors"
HEAD_CONFIG = "zero_shot_head.json"


@torch.no_grad()
def zero_shot_head(clip: CLIPModel, tokenizer, class_names: list[str], templates,
                   batch_size: int = 256) -> torch.Tensor:
    """(num_classes, dim) unit rows: per class, the re-normalised mean of the L2-normalised
    embeddings of its prompts."""
    templates = resolve_templates(templates)
    prompts = [t.format(name) for name in class_names for t in templates]
    device = next(clip.parameters()).device
    was_training = clip.training
    clip.eval()
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        embeddings.append(F.normalize(clip.get_text_features(**tokens).pooler_output.float(), dim=-1))
    clip.train(was_training)
    per_prompt = torch.cat(embeddings).reshape(len(class_names), len(templates), -1)
    return F.normalize(F.normalize(per_prompt, dim=-1).mean(dim=1), dim=-1)


class CLIPZeroShotClassifier(nn.Module):
    """Logits of a CLIP image tower against a zero-shot text head.

    ``forward(pixel_values)`` takes (B, 3, H, W) images in [0, 1] and does CLIP's own resize
    and normalisation at its door, so attacks and discretizers stay in pixel space.

        teacher = CLIPZeroShotClassifier.from_clip("openai/clip-vit-large-patch14", class_names)
        teacher.save_pretrained("clip-l14-imagenet-head")            # head saved, not recomputed
        teacher = CLIPZeroShotClassifier.from_pretrained("clip-l14-imagenet-head")
    """
    def __init__(self, vision_model: CLIPVisionModelWithProjection, head: torch.Tensor, logit_scale: float,
                 class_names: list[str], preprocessor: PixelPreprocessor, templates=("{}",),
                 image_processor: CLIPImageProcessor | None = None, prompt_names: list[str] | None = None):
        super().__init__()
        if head.shape[0] != len(class_names):
            raise ValueError(f"the head has {head.shape[0]} rows for {len(class_names)} class names")
        self.vision_model = vision_model.eval().requires_grad_(False)  # a teacher: frozen
        weight = next(vision_model.parameters())
        self.register_buffer("head", head.to(weight.device, weight.dtype), persistent=False)
        self.logit_scale = float(logit_scale)
        self.class_names = list(class_names)
        self.prompt_names = list(prompt_names) if prompt_names is not None else list(class_names)
        self.templates = list(templates)
        self.preprocessor = preprocessor
        self.image_processor = image_processor
        self.config = vision_model.config  # what Trainer/accelerate inspect on a model

    @classmethod
    def from_clip(cls, name_or_path: str, class_names: list[str] | None, templates="openai",
                  batch_size: int = 256, device=None, prompt_names: list[str] | None = None,
                  head: torch.Tensor | None = None, logit_scale: float | None = None,
                  **kwargs) -> CLIPZeroShotClassifier:
        """Builds the head from a ``CLIPModel`` checkpoint (Hub id or path) and class names.

        The head's prompts (80 templates per class: 80,000 for ImageNet-1k) go through the text
        tower once, on ``device`` (default: this process's accelerator), on the main process of a
        launch; the others receive the head and never load the text tower. Given ``head`` and
        ``logit_scale`` (a head built before), no text tower runs and no process waits for another.

        The text tower reads ``prompt_names`` (default: OpenAI's curated names when
        ``class_names`` are ImageNet-1k's, ``class_names`` otherwise); the classifier keeps
        ``class_names``, by which heads are matched to datasets.
        """
        if not class_names:
            raise ValueError("a CLIP teacher needs class names: use a dataset whose label column is a "
                             "ClassLabel, or give them in label order (recipes: --class_names_file)")
        prompt_names = list(prompt_names) if prompt_names is not None else zero_shot_names(class_names)
        if len(prompt_names) != len(class_names):
            raise ValueError(f"{len(prompt_names)} prompt names for {len(class_names)} classes")
        templates = resolve_templates(templates)
        state = PartialState()
        device = device if device is not None else state.device
        given = head is not None
        if given and logit_scale is None:
            raise ValueError("a given head needs its logit_scale")
        if not given and state.is_main_process:  # the text tower runs once, on the accelerator; the others get the head
            clip = CLIPModel.from_pretrained(name_or_path, **kwargs).to(device)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            head = zero_shot_head(clip, tokenizer, prompt_names, templates, batch_size).cpu()
            logit_scale = float(clip.logit_scale.detach().float().exp())
            del clip
        if not given and state.num_processes > 1:
            head, logit_scale = broadcast_object_list([head, logit_scale])
        config = CLIPConfig.from_pretrained(name_or_path)
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim  # kept at the top level of CLIPConfig
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the text tower's weights are left out on purpose: no load report
        try:
            vision_model = CLIPVisionModelWithProjection.from_pretrained(name_or_path, config=vision_config, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        vision_model.to(device)
        image_processor = CLIPImageProcessor.from_pretrained(name_or_path)
        return cls(vision_model.eval(), head, logit_scale, class_names,
                   PixelPreprocessor.from_image_processor(image_processor), templates, image_processor, prompt_names)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> CLIPZeroShotClassifier:
        """Loads a classifier saved by ``save_pretrained`` (image tower, processor, head)."""
        head_file = os.path.join(path, HEAD_WEIGHTS)
        if not os.path.isfile(head_file):
            raise ValueError(f"{path} holds no zero-shot head ({HEAD_WEIGHTS}); build one from a CLIP "
                             "checkpoint with CLIPZeroShotClassifier.from_clip(name_or_path, class_names)")
        with open(os.path.join(path, HEAD_CONFIG)) as f:
            meta = json.load(f)
        vision_model = CLIPVisionModelWithProjection.from_pretrained(path, **kwargs)
        image_processor = CLIPImageProcessor.from_pretrained(path)
        head = load_file(head_file)["head"].to(next(vision_model.parameters()).device)
        return cls(vision_model.eval(), head, meta["logit_scale"], meta["class_names"],
                   PixelPreprocessor.from_image_processor(image_processor), meta["templates"], image_processor,
                   meta.get("prompt_names"))

    def save_pretrained(self, save_directory: str) -> None:
        os.makedirs(save_directory, exist_ok=True)
        self.vision_model.save_pretrained(save_directory)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(save_directory)
        save_file({"head": self.head.float().cpu().contiguous()}, os.path.join(save_directory, HEAD_WEIGHTS))
        with open(os.path.join(save_directory, HEAD_CONFIG), "w") as f:
            json.dump({"logit_scale": self.logit_scale, "class_names": self.class_names,
                       "prompt_names": self.prompt_names, "templates": self.templates}, f, indent=2)

    @property
    def num_labels(self) -> int:
        return len(self.class_names)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of [0, 1] images."""
        pixels = self.preprocessor(pixel_values).to(next(self.vision_model.parameters()).dtype)
        embeds = self.vision_model(pixel_values=pixels).image_embeds
        return F.normalize(embeds, dim=-1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of (B, 3, H, W) images in [0, 1]."""
        embeds = self.image_embeddings(pixel_values)
        return self.logit_scale * embeds @ self.head.to(embeds.dtype).t()


def load_pixel_classifier(name_or_path: str) -> nn.Module:
    """A module from [0, 1] pixels to logits: a saved ``CLIPZeroShotClassifier``, or an image
    classifier behind its own image processor's normalisation."""
    if os.path.isfile(os.path.join(name_or_path, HEAD_WEIGHTS)):
        return CLIPZeroShotClassifier.from_pretrained(name_or_path)
    return PixelSpaceClassifier(load_vision_model(name_or_path), PixelPreprocessor.from_pretrained(name_or_path))


def saved_head_classes(path: str) -> list[str] | None:
    """The class names of a saved ``CLIPZeroShotClassifier``'s head, or ``None`` if it holds none."""
    file = os.path.join(path, HEAD_CONFIG)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return list(json.load(f)["class_names"])
