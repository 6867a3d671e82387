"""Everything that can be checked is checked before the first step, in one pass, and a failed
check writes nothing: bad flags, YAML typos, checkpoints, labels, class orders."""

import os

import pytest
import torch
from datasets import ClassLabel, Dataset, Image as ImageFeature
from transformers import AutoImageProcessor, ViTForImageClassification

from tests.conftest import DIGIT_NAMES, load_recipe, recipe_argv, save_image_dataset
from hf_robust_distill import CLIPZeroShotClassifier, DistillationConfig, RobustDistillationTrainer
from hf_robust_distill.data import demo_digits, prepare_dataset, split_train_eval
from hf_robust_distill.models import (REORDER, SAME, PixelPreprocessor, align_head, load_vision_model, load_with_head,
                                      match_head)
from hf_robust_distill.utils import PreflightError


def digit_images(count: int, offset: int = 0) -> list:
    return demo_digits()["train"].select(range(offset, offset + count))["image"]


def problems_of(error) -> dict[str, str]:
    found: dict[str, str] = {}
    for where, message in error.value.problems:
        found[where] = f"{found[where]} | {message}" if where in found else message
    return found


def test_every_bad_flag_is_listed_at_once_and_nothing_is_written(tiny_vit, photo_folder, tmp_path):
    """Today each of these costs a whole run, found one at a time after training."""
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("learning_rte: 0.1\nnum_train_epochs: 2\n")
    out = tmp_path / "out"
    with pytest.raises(PreflightError) as error:
        load_recipe("multilevel").main([
            "--config", str(recipe_file), "--teacher_name_or_path", tiny_vit, "--dataset_name", photo_folder,
            "--output_dir", str(out), "--use_cpu", "--eval_distortions", "gausian_noise:3",
            "--robustness_corruptions", "gaussian_noise,glass_blurr,snow", "--robustness_severities", "6",
            "--robustness_baseline", "teachr", "--natural_shifts", "imagenet-r", "--probe_label_fraction", "0",
            "--push_to_hub", "--hub_model_id", "me/my model!!", "--corruption_cache_dir", str(tmp_path / "cache"),
            "--teacher_sharding", "true", "--activation_checkpointing", "true",
            "--activation_checkpointing_kwargs", '{"use_reentrant": true}',
        ])
    found = problems_of(error)
    assert "accelerate launch --num_processes N recipes/multilevel.py" in found["--teacher_sharding"]
    assert '"use_reentrant": false' in found["--activation_checkpointing_kwargs"]
    assert "unknown key 'learning_rte'; did you mean 'learning_rate'?" in found["--config"]
    assert str(recipe_file) in found["--config"]
    assert "did you mean 'gaussian_noise'" in found["--eval_distortions"]
    corruptions = found["--robustness_corruptions"]
    assert "did you mean 'glass_blur'" in corruptions
    assert "torch port" not in corruptions  # snow, like every corruption, has one
    assert "integers from 1 to 5" in found["--robustness_severities"]
    assert "did you mean 'teacher'" in found["--robustness_baseline"]
    assert "name=dataset[:split]" in found["--natural_shifts"]
    assert "(0, 1]" in found["--probe_label_fraction"]
    assert "not a valid Hub repo id" in found["--hub_model_id"]
    assert not os.path.exists(out)  # nothing trained, nothing written


def test_unknown_flags_are_named_with_the_closest_one(tiny_vit, tmp_path):
    with pytest.raises(PreflightError) as error:
        load_recipe("multilevel").parse_args(["--teacher_name_or_path", tiny_vit, "--learnig_rate", "1e-4",
                                              "--output_dir", str(tmp_path)])
    assert "did you mean 'learning_rate'" in problems_of(error)["--learnig_rate"]


def test_yaml_values_are_read_as_their_flags_read_them(tiny_vit, tmp_path):
    """YAML reads 1e-4 as a string; the flag's type makes it a float, as on the command line."""
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"teacher_name_or_path: {tiny_vit}\nlearning_rate: 1e-4\nweight_decay: 0.05\n")
    *_, config = load_recipe("multilevel").parse_args(["--config", str(recipe_file), "--output_dir", str(tmp_path)])
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float) and config.weight_decay == 0.05


def test_a_missing_vq_model_and_a_clip_teacher_without_class_names_are_named(tiny_clip, tiny_vit, tmp_path):
    """Today: 'the input range is unknown' for a path that does not exist, and an error naming a
    --class_names_file flag that did not exist."""
    data = save_image_dataset(tmp_path / "ints", {"train": (digit_images(24), list(range(10)) * 2 + [0] * 4, None),
                                                  "test": (digit_images(8, 24), list(range(8)), None)})
    out = tmp_path / "out"
    recipe = load_recipe("dad")
    argv = ["--teacher_name_or_path", tiny_clip, "--student_name_or_path", tiny_vit, "--dataset_name", data,
            "--output_dir", str(out), "--use_cpu", "--corruption_cache_dir", str(tmp_path / "cache")]
    with pytest.raises(PreflightError) as error:
        recipe.main([*argv, "--vq_name_or_path", str(tmp_path / "no-such-vq")])
    found = problems_of(error)
    assert "does not exist" in found["--vq_name_or_path"] and "input range" not in found["--vq_name_or_path"]
    assert "--class_names_file" in found["--teacher_name_or_path"]
    assert not os.path.exists(out)

    names = tmp_path / "names.txt"
    names.write_text("\n".join(DIGIT_NAMES))
    vq = tmp_path / "vq-without-range"
    from hf_robust_distill.cli import demo_vq_model

    demo_vq_model(num_codes=16).save_pretrained(vq)
    with pytest.raises(PreflightError) as error:
        recipe.main([*argv, "--vq_name_or_path", str(vq), "--class_names_file", str(names)])
    assert list(problems_of(error)) == ["--vq_name_or_path"]
    assert "--vq_input_range" in problems_of(error)["--vq_name_or_path"]
    checked = recipe.preflight([*argv, "--vq_name_or_path", str(vq), "--vq_input_range", "[-1,1]",
                                "--class_names_file", str(names)])
    assert checked.data.names == DIGIT_NAMES and not os.path.exists(out)


def test_an_unlabelled_test_split_is_passed_over_when_chosen_for_you_and_refused_when_named(tiny_vit, tmp_path):
    """Today an auto-selected test split with every label -1 scores 0% for teacher and student."""
    labels = ClassLabel(names=DIGIT_NAMES)
    data = save_image_dataset(tmp_path / "data", {
        "train": (digit_images(40), [i % 10 for i in range(40)], labels),
        "test": (digit_images(10, 40), [-1] * 10, labels)})
    from hf_robust_distill.data import load_image_dataset

    train, evaluation = split_train_eval(load_image_dataset(data))
    assert len(train) + len(evaluation) == 40 and -1 not in evaluation["label"]  # held out of train instead
    out = tmp_path / "out"
    with pytest.raises(PreflightError) as error:  # with a flag typo: both in one list
        load_recipe("multilevel").main(recipe_argv(tiny_vit, out, tmp_path / "cache", "--dataset_name", data,
                                                   "--eval_split", "test", "--robustness_severities", "0"))
    found = problems_of(error)
    assert "10 of the 10 images of the evaluation split are unlabelled" in found["--label_column (evaluation split)"]
    assert "integers from 1 to 5" in found["--robustness_severities"]
    assert not os.path.exists(out)


def test_string_labels_become_classes(tiny_vit, tmp_path):
    """Today: 'too many dimensions 'str''."""
    names = ["cat", "dog"]
    data = save_image_dataset(tmp_path / "data", {
        "train": (digit_images(24), [names[i % 2] for i in range(24)], None),
        "test": (digit_images(8, 24), [names[i % 2] for i in range(8)], None)})
    out = tmp_path / "out"
    results = load_recipe("multilevel").main(recipe_argv(tiny_vit, out, tmp_path / "cache", "--dataset_name", data,
                                                         "--force_push"))
    student = results["trainer"].model
    assert [student.config.id2label[i] for i in range(2)] == names
    assert set(results["table"]["student"]) >= {"clean"} and os.path.isfile(out / "README.md")


def push_refused_before_training(tiny_vit, data: str, tmp_path) -> str:
    """The problem a push of ``data``'s student meets before training; nothing may be written."""
    out = tmp_path / "out"
    with pytest.raises(PreflightError) as error:
        load_recipe("multilevel").main(recipe_argv(tiny_vit, out, tmp_path / "cache", "--dataset_name", data,
                                                   "--push_to_hub", "--hub_model_id", "tester/unscored"))
    assert not os.path.exists(out)
    return problems_of(error)["--push_to_hub"]


def test_one_class_data_says_so_and_a_push_of_it_is_refused_before_training(tiny_vit, tmp_path, caplog):
    """Today: no table, report or card, and no word why."""
    one = ClassLabel(names=["cat"])
    data = save_image_dataset(tmp_path / "data", {"train": (digit_images(16), [0] * 16, one),
                                                  "test": (digit_images(8, 16), [0] * 8, one)})
    assert "no model card to push" in push_refused_before_training(tiny_vit, data, tmp_path)
    assert "single class" in caplog.text
    out = tmp_path / "out"
    results = load_recipe("multilevel").main(recipe_argv(tiny_vit, out, tmp_path / "cache", "--dataset_name", data))
    assert results["table"] == {} and not os.path.exists(out / "README.md")


def test_unlabelled_data_says_so_and_a_push_of_it_is_refused_before_training(tiny_vit, tmp_path, caplog):
    data = str(tmp_path / "no-labels")
    Dataset.from_dict({"image": digit_images(24)}).cast_column("image", ImageFeature()).save_to_disk(data)
    assert "no model card to push" in push_refused_before_training(tiny_vit, data, tmp_path)
    assert "no labels: no accuracy table, robustness report or model card" in caplog.text


def permuted_classifier(path, order, folder) -> str:
    """The checkpoint with its classes listed in ``order``: the same function, other label ids."""
    model = ViTForImageClassification.from_pretrained(path)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order])
        model.classifier.bias.copy_(model.classifier.bias[order])
    names = [model.config.id2label[i] for i in order]
    model.config.id2label, model.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    model.save_pretrained(folder)
    AutoImageProcessor.from_pretrained(path).save_pretrained(folder)
    return str(folder)


def test_a_teacher_of_the_classes_in_another_order_is_mapped_or_refused(tiny_vit, digits, tmp_path):
    """Today a KD teacher with the same classes in another order trains without a word."""
    order = list(reversed(range(10)))
    shuffled = permuted_classifier(tiny_vit, order, tmp_path / "reversed")
    original = load_vision_model(tiny_vit, attention_maps=True).eval()
    reordered = load_vision_model(shuffled, attention_maps=True).eval()
    assert match_head(reordered, DIGIT_NAMES) == REORDER
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    train, _ = digits
    args = DistillationConfig(output_dir=str(tmp_path / "kd"), cls_weight=0, patch_weight=0, attn_weight=0,
                              kd_weight=1, distortions="clean", max_steps=1, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="another order"):
        RobustDistillationTrainer(model=load_vision_model(tiny_vit), teacher=reordered, args=args,
                                  train_dataset=train, processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    align_head(reordered, DIGIT_NAMES)
    assert match_head(reordered, DIGIT_NAMES) == SAME
    with torch.no_grad():
        assert torch.allclose(reordered(pixel_values=pixels).logits, original(pixel_values=pixels).logits)

    # the KD recipe maps it: its teacher scores exactly as the original teacher does
    results = load_recipe("multilevel").main(recipe_argv(shuffled, tmp_path / "out", tmp_path / "cache",
                                                         "--student_name_or_path", tiny_vit, "--kd_weight", "1",
                                                         "--max_eval_samples", "32", "--force_push"))
    processor = PixelPreprocessor.from_pretrained(tiny_vit)
    teacher_row = results["table"]["teacher"]
    from hf_robust_distill.evaluation import accuracy

    eval_set = prepare_dataset(demo_digits()["test"].select(range(32)), AutoImageProcessor.from_pretrained(tiny_vit))
    assert teacher_row["clean"] == accuracy(original, processor, eval_set)


def test_a_saved_zero_shot_head_in_another_order_is_mapped(tiny_clip, tmp_path):
    teacher = CLIPZeroShotClassifier.from_clip(tiny_clip, list(reversed(DIGIT_NAMES)), templates="short")
    teacher.save_pretrained(str(tmp_path / "head"))
    reloaded = CLIPZeroShotClassifier.from_pretrained(str(tmp_path / "head"))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = reloaded(images)
    assert match_head(reloaded, DIGIT_NAMES) == REORDER
    align_head(reloaded, DIGIT_NAMES)
    assert reloaded.class_names == DIGIT_NAMES
    assert torch.allclose(reloaded(images), before.flip(-1))


def test_a_student_of_the_classes_in_another_order_keeps_its_trained_head(tiny_vit, tmp_path):
    """Today it got a new, random head."""
    shuffled = permuted_classifier(tiny_vit, [3, 1, 2, 0, 4, 5, 6, 7, 8, 9], tmp_path / "swapped")
    student, head = load_with_head(shuffled, DIGIT_NAMES)
    assert head == "reordered"
    original = load_vision_model(tiny_vit)
    assert torch.equal(student.classifier.weight, original.classifier.weight)
    other, head = load_with_head(tiny_vit, ["cat", "dog"])
    assert head == "new" and other.classifier.weight.shape == (2, 32)
