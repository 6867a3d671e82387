"""A bad image never stops a run: it is skipped where it is drawn, logged once with its file and
counted; the evaluation split's bad files are listed before training; too many stop the run."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_recipe, recipe_argv, truncate
from hf_robust_distill.data import (BadImageLog, TooManyBadImages, collate_images, decode_rgb, load_image_dataset,
                                    prepare_dataset, to_rgb)
from hf_robust_distill.evaluation import RobustnessReport
from hf_robust_distill.utils import PreflightError


@pytest.fixture
def folder_with_bad_files(photo_folder, tmp_path):
    """The photo folder with one truncated JPEG in each split."""
    folder = shutil.copytree(photo_folder, tmp_path / "photos")
    return str(folder), truncate(folder / "train" / "cat" / "3.jpg"), truncate(folder / "test" / "coffee" / "1.jpg")


def test_a_file_that_does_not_decode_is_named_with_its_error(photo_folder, tmp_path):
    truncated = truncate(shutil.copy(os.path.join(photo_folder, "train", "cat", "0.jpg"), tmp_path / "cut.jpg"))
    image, problem = decode_rgb({"bytes": None, "path": truncated})
    assert image is None and problem.source == truncated and "truncated" in problem.error
    (tmp_path / "notes.jpg").write_text("not an image at all")
    image, problem = decode_rgb({"bytes": None, "path": str(tmp_path / "notes.jpg")})
    assert image is None and "UnidentifiedImageError" in problem.error


def test_the_collator_leaves_bad_rows_out_and_lists_them(folder_with_bad_files):
    folder, bad_train, _ = folder_with_bad_files
    train = load_image_dataset(folder)["train"]
    prepared = prepare_dataset(train, (32, 32))
    rows = [prepared[i] for i in range(len(prepared))]
    batch = collate_images(rows)
    assert len(batch["pixel_values"]) == len(rows) - 1 == len(batch["labels"])
    assert [b.source for b in batch["bad_images"]] == [bad_train]
    assert list(batch)[0] == "pixel_values" and list(batch)[-1] == "bad_images"


def test_a_bad_training_image_is_skipped_logged_once_and_counted(folder_with_bad_files, tiny_vit, tmp_path, caplog):
    """Today one truncated JPEG stops training at the step that draws it, naming no file."""
    folder, bad_train, bad_test = folder_with_bad_files
    out = tmp_path / "out"
    argv = recipe_argv(tiny_vit, out, tmp_path / "cache", "--dataset_name", folder, "--max_steps", "9",
                       "--max_bad_image_fraction", "0.15", "--force_push")
    results = load_recipe("multilevel").main(argv)  # 3 epochs of 24 images: the bad one is drawn 3 times
    trainer = results["trainer"]
    assert trainer.state.global_step == 9 and list(trainer.bad_images.images) == [bad_train]
    assert caplog.text.count(f"does not decode: {bad_train}") == 1
    assert "1 image(s) of the training split did not decode and were skipped" in caplog.text
    report = RobustnessReport.load(str(out))
    assert report.skipped_images == 1 and report.num_examples == 7  # the bad test image is left out
    card = (out / "README.md").read_text()
    assert "1 images of the evaluation set could not be decoded" in card
    assert "**Training images skipped**: 1" in card


def test_the_evaluation_split_is_decoded_before_training_and_too_many_bad_files_stop_the_run(
        folder_with_bad_files, tiny_vit, tmp_path):
    """Today a bad evaluation image stops the run after training, when the report is made."""
    folder, _, bad_test = folder_with_bad_files
    out = tmp_path / "out"
    with pytest.raises(PreflightError) as error:  # 1 of 8 images is more than the default 1 %
        load_recipe("multilevel").main(recipe_argv(tiny_vit, out, tmp_path / "cache", "--dataset_name", folder))
    (where, message), = error.value.problems
    assert where == "--eval_split" and bad_test in message and "--max_bad_image_fraction" in message
    assert not os.path.exists(out)


def test_too_many_bad_training_images_stop_the_run_with_their_list():
    log = BadImageLog(total=100, max_fraction=0.01)
    first, second = (decode_rgb({"bytes": b"not an image", "path": f"/data/{i}.jpg"})[1] for i in range(2))
    log.record([first])
    log.record([first])  # drawn again in a later epoch: still one
    assert len(log) == 1
    with pytest.raises(TooManyBadImages, match="/data/0.jpg.*/data/1.jpg"):
        log.record([second])


def test_greyscale_decodes_as_the_pipeline_decodes_it_or_names_why_it_cannot(tmp_path):
    """16-bit greyscale within 0-255 decodes as load_image decodes it; values the pipeline would clip
    (white) or truncate make the image a bad one, whose reason names the fix."""
    from transformers.image_utils import load_image

    dim = np.full((4, 4), 200, dtype=np.uint16)
    Image.fromarray(dim).save(tmp_path / "dim.png")
    ours = to_rgb(Image.open(tmp_path / "dim.png"))
    assert np.array_equal(np.asarray(ours), np.asarray(load_image(str(tmp_path / "dim.png"))))
    bright = np.full((4, 4), 4000, dtype=np.uint16)
    Image.fromarray(bright).save(tmp_path / "bright.png")
    image, bad = decode_rgb({"bytes": None, "path": str(tmp_path / "bright.png")})
    assert image is None and "16-bit greyscale with values from 4000 to 4000" in bad.error
    assert "clips to 0-255" in bad.error and "Convert the images to 8-bit" in bad.error
    with pytest.raises(ValueError, match="float greyscale .* and truncates"):
        to_rgb(Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), mode="F"))


def test_exif_orientation_is_applied_as_the_pipeline_applies_it(tmp_path):
    photo = Image.fromarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    from transformers.image_utils import load_image

    ours = decode_rgb({"bytes": None, "path": str(tmp_path / "rotated.jpg")})[0]
    assert ours.size == (2, 3) and np.array_equal(np.asarray(ours), np.asarray(load_image(str(tmp_path / "rotated.jpg"))))
