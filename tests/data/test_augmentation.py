"""The training images are timm's: its ImageNet training transform from the original image, per image,
in the loader's workers, with draws seeded by (seed, epoch, row); 8-bit pixels across the bus."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Image as ImageFeature
from PIL import Image
from torch.utils.data import DataLoader

from hf_robust_distill import DistillationConfig
from hf_robust_distill.data import (AugmentationSettings, ImageResizer, TrainingTransform, collate_images,
                                    parse_rand_augment, prepare_dataset, unit_levels)
from hf_robust_distill.data.augmentation import seeded_draws
from hf_robust_distill.data.images import to_uint8
from tests.conftest import run_in_two_processes
from tests.training.test_trainer import make_config, make_trainer

OFFICIAL = AugmentationSettings(random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1",
                                color_jitter=0.4, random_erasing=0.25, interpolation="bicubic")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def original():
    """scikit-image's astronaut at an ImageNet-like 4:3 size, as a training image arrives."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((200, 150), Image.BILINEAR)


def timm_reference(settings: AugmentationSettings, size: int):
    """DeiT's transform as timm builds it, normalised and erased in the model's space."""
    from timm.data import create_transform

    return create_transform(size, is_training=True, scale=settings.crop_scale, hflip=settings.hflip,
                            color_jitter=settings.color_jitter, auto_augment=settings.rand_augment,
                            interpolation=settings.interpolation, re_prob=settings.random_erasing, re_mode="pixel",
                            re_count=1, mean=MEAN, std=STD)


def test_the_training_transform_is_timms_given_the_same_draws(original):
    """The crop from the original image, flip, RandAugment and erasing: timm's own pipeline, whose
    normalised output mapped back to 8-bit pixels is ours exactly (erasing ported to pixel space)."""
    ours, reference = TrainingTransform(OFFICIAL, (48, 48), MEAN, STD), timm_reference(OFFICIAL, 48)
    unerased = TrainingTransform(replace(OFFICIAL, random_erasing=0.0), (48, 48), MEAN, STD)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    compared = erased = 0
    for seed in range(60):
        with seeded_draws(seed):
            try:
                expected = reference(original)
            except ValueError:  # Pillow 13 and timm's 0-bit posterize (the next test)
                continue
        expected = (expected * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
        got = ours(original, seed)
        assert got.dtype == torch.uint8 and got.shape == (3, 48, 48)
        assert torch.equal(got, expected), seed
        compared += 1
        erased += not torch.equal(got, unerased(original, seed))
    assert compared >= 55 and 5 <= erased <= 25  # erasing's probability is 0.25


def test_the_posterize_trap_never_kills_a_run():
    """timm's PosterizeIncreasing asks Pillow 13 for 0 bits about 3 times in 2,000 images."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    settings = AugmentationSettings(rand_augment="rand-m9-mstd0.5-inc1")
    ours, reference = TrainingTransform(settings, (16, 16), MEAN, STD), timm_reference(settings, 16)
    failed = 0
    for seed in range(3000):
        ours(image, seed)  # never raises
        with seeded_draws(seed):
            try:
                reference(image)
            except ValueError as error:
                assert "bits must be" in str(error)
                failed += 1
    assert failed >= 1  # the draws reached the trap


def test_rand_augment_draws_per_image(original):
    """kornia drew the operations once per batch; timm draws two per image, each with p=0.5."""
    settings = AugmentationSettings(rand_augment="rand-m9-mstd0.5-inc1")
    copies = Dataset.from_dict({"image": [original.resize((32, 32))] * 64, "label": [0] * 64}).cast_column(
        "image", ImageFeature())
    rows = prepare_dataset(copies, (32, 32), augmentation=settings, pixel_dtype=torch.uint8)
    images = [rows[i]["pixel_values"] for i in range(64)]
    unchanged = sum(torch.equal(x, prepare_dataset(copies, (32, 32), pixel_dtype=torch.uint8)[0]["pixel_values"])
                    for x in images)
    distinct = len({x.numpy().tobytes() for x in images})
    assert distinct >= 35 and 5 <= unchanged <= 30  # timm: 43-50 distinct, 13-17 unchanged


def labelled_photos(original, count=12, classes=None) -> Dataset:
    """Crops of the photo of varied sizes, labelled by their row (a batch says which rows it holds), or
    by the row modulo ``classes``."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        w, h = int(rng.integers(60, 200)), int(rng.integers(60, 150))
        images.append(original.crop((0, 0, w, h)))
    classes = classes or count
    return Dataset.from_dict({"image": images, "label": [i % classes for i in range(count)]}).cast_column(
        "image", ImageFeature()).cast_column("label", ClassLabel(num_classes=classes))


def pixels_by_row(loader) -> dict[int, bytes]:
    return {int(label): image.numpy().tobytes() for batch in loader
            for label, image in zip(batch["labels"], batch["pixel_values"])}


def test_the_same_rows_give_the_same_pixels_whatever_the_workers_and_epochs(original):
    rows = prepare_dataset(labelled_photos(original), (32, 32), augmentation=OFFICIAL, seed=3, pixel_dtype=torch.uint8)
    alone = pixels_by_row(DataLoader(rows, batch_size=4, collate_fn=collate_images))
    workers = pixels_by_row(DataLoader(rows, batch_size=4, collate_fn=collate_images, num_workers=2, shuffle=True))
    assert alone == workers and len(alone) == 12
    rows.set_epoch(1)  # seen by persistent workers too: the epoch lives in shared memory
    persistent = DataLoader(rows, batch_size=4, collate_fn=collate_images, num_workers=2, persistent_workers=True)
    second = pixels_by_row(persistent)
    assert all(second[r] != alone[r] for r in alone)  # another epoch, other draws
    rows.set_epoch(0)
    assert pixels_by_row(persistent) == alone  # back at epoch 0 (a resume): the same pixels


def _two_processes_draw_their_share(rows, expected):
    from accelerate import Accelerator

    loader = Accelerator().prepare(DataLoader(rows, batch_size=2, collate_fn=collate_images, shuffle=True))
    mine = pixels_by_row(loader)
    assert mine and all(expected[r] == pixels for r, pixels in mine.items())


def test_two_processes_each_draw_the_pixels_one_process_draws_for_its_rows(original):
    rows = prepare_dataset(labelled_photos(original), (32, 32), augmentation=OFFICIAL, seed=3, pixel_dtype=torch.uint8)
    expected = pixels_by_row(DataLoader(rows, batch_size=4, collate_fn=collate_images))
    run_in_two_processes(_two_processes_draw_their_share, rows, expected)


def test_eight_bit_rows_reach_the_views_as_the_processors_floats(tiny_vit, digits, tmp_path):
    """uint8 across the bus, the processor's floats on the device: the same loss as float rows."""
    from transformers import AutoImageProcessor

    from hf_robust_distill.data import demo_digits

    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    raw = demo_digits()["train"].select(range(16))
    floats, eights = (prepare_dataset(raw, processor, pixel_dtype=dtype) for dtype in (torch.float32, torch.uint8))
    assert eights[0]["pixel_values"].dtype == torch.uint8
    levels = unit_levels(processor)
    assert torch.equal(levels[eights[3]["pixel_values"].long()], floats[3]["pixel_values"])
    losses = []
    for rows in (floats, eights):
        trainer = make_trainer(tiny_vit, make_config(tmp_path / str(len(losses)), max_steps=2, kd_weight=1.0), rows)
        trainer.train()
        losses.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert losses[0] == losses[1]


def test_the_training_set_of_a_run_follows_the_epoch_and_teacher_sees_the_students_crop(tiny_vit, original,
                                                                                          tmp_path):
    """Teacher = student and no distortion: with every augmentation on, the KD and [CLS] terms are 0
    only if both saw the same crop of the same image; the trainer moves the draws' epoch."""
    rows = prepare_dataset(labelled_photos(original, 16, classes=10), ImageResizer((32, 32)), augmentation=OFFICIAL,
                           pixel_dtype=torch.uint8)
    args = make_config(tmp_path, max_steps=4, learning_rate=0.0, distortions="clean", kd_weight=1.0,
                       random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1", random_erasing=1.0)
    trainer = make_trainer(tiny_vit, args, rows)
    trainer.train()
    assert trainer.loss_parts.last["loss_kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert trainer.loss_parts.last["loss_cls"].item() == pytest.approx(0.0, abs=1e-6)
    assert rows.epoch == 1  # 16 rows in batches of 8: the fourth step is the second epoch's


def test_specs_and_settings_are_checked():
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == (2, 9.0, 0.5)
    assert parse_rand_augment("rand-n3-m7") == (3, 7.0, 0.0)
    for bad in ("randaugment", "rand-n2", "rand-m12"):
        with pytest.raises(ValueError):
            parse_rand_augment(bad)
    with pytest.raises(ValueError, match="--rand_augment"):
        DistillationConfig(output_dir="x", rand_augment="m9")
    with pytest.raises(ValueError, match="--train_interpolation"):
        DistillationConfig(output_dir="x", train_interpolation="nearest")


def test_a_dad_image_shares_its_clean_images_draws_under_the_papers_objective_only(original):
    """The paper's objective compares each clean image with its DAD image, so the pair shares its crop,
    taken in the frame the DAD image was made in; the official script's two loaders draw apart."""
    from hf_robust_distill.data.columns import DAD_IMAGE, DAD_PIXELS

    clean = labelled_photos(original, 8)
    frame = ImageResizer((32, 32))
    made_in_frame = [Image.fromarray(to_uint8(frame([img.convert("RGB")])[0]).permute(1, 2, 0).numpy())
                     for img in clean["image"]]
    paired = Dataset.from_dict({**clean.to_dict(), DAD_IMAGE: made_in_frame}).cast_column(
        "image", ImageFeature()).cast_column(DAD_IMAGE, ImageFeature())
    for shared in (True, False):
        rows = prepare_dataset(paired, frame, extra_images={DAD_IMAGE: DAD_PIXELS}, augmentation=OFFICIAL,
                               shared_draws=shared, pixel_dtype=torch.uint8)
        batch = collate_images([rows[i] for i in range(8)])
        same = [torch.equal(a, b) for a, b in zip(batch["pixel_values"], batch[DAD_PIXELS])]
        assert all(same) if shared else not any(same)


def test_the_dad_recipe_draws_pairs_as_its_objective_says(tiny_clip, tiny_vq, tiny_vit, tmp_path):
    from tests.conftest import load_recipe

    common = ["--teacher_name_or_path", tiny_clip, "--prompt_templates", "short", "--vq_name_or_path", tiny_vq,
              "--student_name_or_path", tiny_vit, "--max_train_samples", "8", "--max_eval_samples", "8",
              "--generation_batch_size", "8", "--use_cpu", "--report_to", "none", "--generate_only",
              "--random_resized_crop", "--rand_augment", "rand-m9-mstd0.5-inc1", "--corruption_cache_dir",
              str(tmp_path / "cache")]
    for objective, shared in (("official", False), ("separate", True)):
        out = tmp_path / objective
        train_set = load_recipe("dad").main([*common, "--dad_objective", objective, "--output_dir", str(out)])["train_set"]
        assert train_set.shared is shared and train_set[0]["pixel_values"].dtype == torch.uint8


def test_a_resumed_augmented_run_ends_as_the_uninterrupted_one(tiny_vit, original, tmp_path):
    """Stopped inside the second epoch and resumed: the same draws, so the same weights."""
    from tests.training.test_trainer import StopAt

    def run(name, stop=None, resume=None):
        rows = prepare_dataset(labelled_photos(original, 16, classes=10), ImageResizer((32, 32)), augmentation=OFFICIAL,
                               seed=5, pixel_dtype=torch.uint8)
        args = make_config(tmp_path / name, max_steps=6, save_strategy="steps", save_steps=3, random_resized_crop=True,
                           rand_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25, hflip=0.5)
        trainer = make_trainer(tiny_vit, args, rows)
        if stop:
            trainer.add_callback(StopAt(stop))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run("straight")
    run("resumed", stop=3)
    resumed = run("resumed", resume=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
