import os

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

from tests.conftest import DIGIT_NAMES
from hf_robust_distill import CLIPZeroShotClassifier
from hf_robust_distill.data import imagenet_classes, is_imagenet_1k, subset_names, zero_shot_names
from hf_robust_distill.evaluation import NaturalShift
from hf_robust_distill.models import OPENAI_IMAGENET_TEMPLATES, resolve_templates

TEMPLATES = ["a photo of the digit {}.", "a handwritten {}."]
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def hand_head(path, names, templates):
    """The zero-shot head written out prompt by prompt."""
    clip, tokenizer = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    rows = []
    with torch.no_grad():
        for name in names:
            per_template = []
            for template in templates:
                tokens = tokenizer([template.format(name)], return_tensors="pt")
                pooled = clip.text_model(input_ids=tokens["input_ids"]).pooler_output
                embedding = clip.text_projection(pooled)[0]
                per_template.append(embedding / embedding.norm())
            mean = torch.stack(per_template).mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows), clip


def test_zero_shot_head_equals_a_hand_computation(tiny_clip):
    teacher = CLIPZeroShotClassifier.from_clip(tiny_clip, DIGIT_NAMES, templates=TEMPLATES)
    head, clip = hand_head(tiny_clip, DIGIT_NAMES, TEMPLATES)
    torch.testing.assert_close(teacher.head, head, atol=1e-5, rtol=1e-5)
    assert teacher.logit_scale == pytest.approx(float(clip.logit_scale.detach().exp()))

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        normalised = (images - CLIP_MEAN) / CLIP_STD  # CLIP's statistics, applied once
        pooled = clip.vision_model(pixel_values=normalised).pooler_output
        embedding = F.normalize(clip.visual_projection(pooled), dim=-1)
        expected = clip.logit_scale.exp() * embedding @ head.t()
        twice = clip.visual_projection(clip.vision_model(pixel_values=(normalised - CLIP_MEAN) / CLIP_STD).pooler_output)
        logits = teacher(images)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits, clip.logit_scale.exp() * F.normalize(twice, dim=-1) @ head.t(), atol=1e-3)


def test_forward_resizes_at_its_door(tiny_clip):
    teacher = CLIPZeroShotClassifier.from_clip(tiny_clip, DIGIT_NAMES, templates="short")
    big = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    small = F.interpolate(big, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(teacher(big), teacher(small))


def test_saved_classifier_reloads_without_the_text_tower(tiny_clip, tmp_path):
    teacher = CLIPZeroShotClassifier.from_clip(tiny_clip, DIGIT_NAMES, templates=TEMPLATES)
    teacher.save_pretrained(str(tmp_path))
    assert not any("tokenizer" in f for f in os.listdir(tmp_path))  # nothing to recompute the head with
    reloaded = CLIPZeroShotClassifier.from_pretrained(str(tmp_path))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), teacher(images))
    assert reloaded.class_names == DIGIT_NAMES and reloaded.templates == TEMPLATES
    assert isinstance(reloaded.image_processor, CLIPImageProcessor)
    assert not any(p.requires_grad for p in reloaded.parameters())


def test_clear_errors(tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="class names"):
        CLIPZeroShotClassifier.from_clip(tiny_clip, None)
    with pytest.raises(ValueError, match="zero-shot head"):
        CLIPZeroShotClassifier.from_pretrained(tiny_clip)
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates(["no slot here"])
    assert len(resolve_templates("openai")) == len(set(OPENAI_IMAGENET_TEMPLATES)) == 80


def test_imagenet_1k_is_recognised_by_every_naming_of_its_classes():
    wnids, wordnet, openai = (list(column) for column in zip(*imagenet_classes()))
    assert len(wnids) == 1000 and wnids == sorted(wnids) and openai[:3] == ["tench", "goldfish", "great white shark"]
    assert wordnet[7] == "cock" and openai[7] == "rooster"
    first_lemmas = [name.split(",")[0].replace(" ", "_") for name in wordnet]  # Keras-style "great_white_shark"
    retouched = wordnet[:995] + [f"class {i}" for i in range(5)]
    for names in (wnids, wordnet, openai, first_lemmas, retouched):
        assert is_imagenet_1k(names) and zero_shot_names(names) == openai
    for names in (wordnet[::-1], wordnet[:999], wordnet[:980] + [f"class {i}" for i in range(20)], DIGIT_NAMES):
        assert not is_imagenet_1k(names) and zero_shot_names(names) == list(names)


def test_an_imagenet_head_reads_openais_names_and_keeps_the_datasets(tiny_clip, tmp_path):
    """A dataset labelled with ImageNet-1k's WordNet names (as the Hub's imagenet-1k is) gets a head
    built from OpenAI's curated names, matched to the dataset by its own names."""
    _, wordnet, openai = (list(column) for column in zip(*imagenet_classes()))
    teacher = CLIPZeroShotClassifier.from_clip(tiny_clip, wordnet, templates=["a photo of a {}."])
    head, _ = hand_head(tiny_clip, openai, ["a photo of a {}."])
    torch.testing.assert_close(teacher.head, head, atol=1e-5, rtol=1e-5)
    assert teacher.class_names == wordnet and teacher.prompt_names == openai
    teacher.save_pretrained(str(tmp_path))
    assert CLIPZeroShotClassifier.from_pretrained(str(tmp_path)).prompt_names == openai
    digits = CLIPZeroShotClassifier.from_clip(tiny_clip, DIGIT_NAMES, templates=TEMPLATES)
    assert digits.prompt_names == DIGIT_NAMES  # other data: its own names (or --class_names_file's)
    # ImageNet-R's and ImageNet-A's 200 classes are named from the same list.
    subset = NaturalShift.parse("imagenet-r=axiong/imagenet-r:test").subset()
    assert subset_names(subset) == [openai[i] for i in subset] and subset_names(subset)[0] == "goldfish"
