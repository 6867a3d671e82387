"""Training data too big to copy: a stream of local Parquet shards, shared among processes by shards,
trained on with --max_steps, resumed where it stopped without decoding the part already seen."""

import os

import pytest
import torch
from datasets import ClassLabel
from torch.utils.data import DataLoader

from hf_robust_distill.data import AugmentationSettings, demo_digits
from hf_robust_distill.data.streams import check_shards, load_stream, prepare_stream
from hf_robust_distill.utils import PreflightError
from tests.cli.test_preflight import problems_of
from tests.conftest import load_recipe, recipe_argv, run_in_two_processes
from tests.training.test_trainer import StopAt, make_config, make_trainer

AUGMENTED = AugmentationSettings(random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1")


def write_shards(folder, shards: int = 4, rows: int = 40, labels_are_rows: bool = False) -> str:
    """``rows`` digits in ``shards`` Parquet files (train) and 16 more (validation), as a Hub copy lays them out."""
    digits = demo_digits()
    train, validation = digits["train"].select(range(rows)), digits["test"].select(range(16))
    if labels_are_rows:  # a batch then says which rows it holds
        train = train.cast_column("label", ClassLabel(num_classes=rows)).map(lambda _, i: {"label": i},
                                                                             with_indices=True)
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    for i in range(shards):
        train.shard(shards, i, contiguous=True).to_parquet(os.path.join(folder, "data",
                                                                        f"train-{i:05d}-of-{shards:05d}.parquet"))
    validation.to_parquet(os.path.join(folder, "data", "validation-00000-of-00001.parquet"))
    return str(folder)


def _each_process_reads_its_shards(folder):
    import torch.distributed as dist
    from accelerate import Accelerator, DataLoaderConfiguration

    rows = prepare_stream(folder, None, "train", (32, 32), "image", "label", augmentation=AUGMENTED, seed=1,
                          shuffle_buffer=8)
    collator = rows.collator
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(dispatch_batches=False,
                                                                        use_stateful_dataloader=True))
    loader = accelerator.prepare(DataLoader(rows, batch_size=4, collate_fn=collator))
    mine = [int(label) for batch in loader for label in batch["labels"]]
    everyone = [None, None]
    dist.all_gather_object(everyone, (mine, int(collator.decoded)))
    (first, decoded_first), (second, decoded_second) = everyone
    assert not set(first) & set(second) and sorted(first + second) == list(range(40))  # disjoint, covering
    assert len(first) == len(second) == 20 and decoded_first == decoded_second == 20  # equal steps, no extra decode


def test_two_processes_each_read_their_own_shards_of_the_stream(tmp_path):
    run_in_two_processes(_each_process_reads_its_shards, write_shards(tmp_path / "stream", labels_are_rows=True))


def test_shards_that_do_not_divide_among_the_processes_are_refused_with_the_fix(tmp_path):
    stream = load_stream(write_shards(tmp_path / "stream", shards=3))["train"]
    check_shards(stream, 3)
    with pytest.raises(ValueError, match="3 shards, which 2 processes cannot share evenly.*multiple of 2"):
        check_shards(stream, 2)


def test_a_resumed_stream_ends_as_the_uninterrupted_run_and_decodes_nothing_twice(tiny_vit, tmp_path):
    folder = write_shards(tmp_path / "stream")

    def run(name, stop=None, resume=None):
        rows = prepare_stream(folder, None, "train", (32, 32), "image", "label", augmentation=AUGMENTED, seed=3,
                              shuffle_buffer=4)
        collator = rows.collator
        args = make_config(tmp_path / name, max_steps=8, save_strategy="steps", save_steps=3,
                           random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1")
        trainer = make_trainer(tiny_vit, args, rows)
        if stop:
            trainer.add_callback(StopAt(stop))
        trainer.train(resume_from_checkpoint=resume)
        return trainer, collator

    straight, _ = run("straight")  # 8 steps of 8 over 40 rows: into the second epoch, reshuffled
    run("resumed", stop=3)
    resumed, collator = run("resumed", resume=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.state.global_step == 8
    assert os.path.isfile(tmp_path / "resumed" / "checkpoint-3" / "stream_position_rank0.pt")
    assert int(collator.decoded) <= 5 * 8 + 8  # the 5 remaining steps and one batch looked ahead, not 8 steps
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_the_recipes_train_and_evaluate_on_a_stream(tiny_vit, tmp_path):
    folder = write_shards(tmp_path / "stream")
    out = tmp_path / "out"
    results = load_recipe("multilevel").main(recipe_argv(tiny_vit, out, tmp_path / "cache", "--dataset_name", folder,
                                                         "--streaming", "--shuffle_buffer", "16", "--force_push"))
    assert results["trainer"].state.global_step == 3 and os.path.isfile(out / "README.md")
    assert results["reports"]["student"].num_examples == 16  # the validation split, read once
    report = load_recipe("evaluate_robustness").main([
        "--model_name_or_path", str(out), "--dataset_name", folder, "--streaming", "--output_dir",
        str(tmp_path / "eval"), "--robustness_corruptions", "contrast", "--robustness_severities", "1",
        "--corruption_cache_dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert report.num_examples == 16 and report.split == "validation"


def test_what_a_stream_cannot_do_is_named_before_any_work(tiny_vit, tmp_path):
    folder = write_shards(tmp_path / "stream")
    argv = recipe_argv(tiny_vit, tmp_path / "out", tmp_path / "cache", "--dataset_name", folder, "--streaming",
                       "--cache_teacher", "--linear_probe")
    argv[argv.index("--max_steps") + 1] = "-1"
    with pytest.raises(PreflightError) as error:
        load_recipe("multilevel").main(argv)
    found = problems_of(error)
    assert "give --max_steps" in found["--max_steps"]
    assert "by row index" in found["--cache_teacher"] and "by row index" in found["--linear_probe"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(PreflightError, match="name its evaluation split with --eval_split"):
        load_recipe("multilevel").main(recipe_argv(tiny_vit, tmp_path / "out", tmp_path / "cache", "--dataset_name",
                                                   folder, "--streaming", "--eval_split", "test"))
    with pytest.raises(PreflightError, match="embedded digits are not a stream"):
        load_recipe("multilevel").main(recipe_argv(tiny_vit, tmp_path / "out", tmp_path / "cache", "--streaming"))


def test_offline_dad_images_of_a_stream_are_refused_with_the_fix(tiny_clip, tiny_vq, tiny_vit, tmp_path):
    folder = write_shards(tmp_path / "stream")
    with pytest.raises(PreflightError) as error:
        load_recipe("dad").main(["--teacher_name_or_path", tiny_clip, "--vq_name_or_path", tiny_vq,
                                 "--student_name_or_path", tiny_vit, "--dataset_name", folder, "--streaming",
                                 "--max_steps", "2", "--output_dir", str(tmp_path / "out"), "--use_cpu"])
    assert any("offline" in where and "by row index" in message for where, message in error.value.problems)


def _train_on_the_stream(tiny_vit, folder, output_dir, stop, resume, digest_file):
    from tests.training.test_ddp import digest_of

    rows = prepare_stream(folder, None, "train", (32, 32), "image", "label", augmentation=AUGMENTED, seed=3,
                          shuffle_buffer=4)
    args = make_config(output_dir, max_steps=8, per_device_train_batch_size=4, save_strategy="steps", save_steps=3,
                       random_resized_crop=True, hflip=0.5, rand_augment="rand-m9-mstd0.5-inc1")
    trainer = make_trainer(tiny_vit, args, rows)
    if stop:
        trainer.add_callback(StopAt(stop))
    trainer.train(resume_from_checkpoint=resume)
    with open(f"{digest_file}.rank{args.process_index}", "w") as f:
        f.write(f"{args.world_size} {trainer.state.global_step} {int(rows.collator.decoded)} "
                f"{digest_of(trainer.accelerator.unwrap_model(trainer.model))}")


def test_two_processes_resume_a_stream_to_the_uninterrupted_runs_weights(tiny_vit, tmp_path):
    folder = write_shards(tmp_path / "stream")
    runs = {"straight": (None, None), "stopped": (3, None), "resumed": (None, str(tmp_path / "two" / "checkpoint-3"))}
    for name, (stop, resume) in runs.items():
        out = tmp_path / ("one" if name == "straight" else "two")
        run_in_two_processes(_train_on_the_stream, tiny_vit, folder, str(out), stop, resume, str(tmp_path / name))
    read = {name: [(tmp_path / f"{name}.rank{r}").read_text().split() for r in (0, 1)] for name in runs}
    assert all(world == "2" for world, *_ in read["straight"])  # two processes, DDP
    assert [steps for _, steps, _, _ in read["resumed"]] == ["8", "8"]
    assert all(int(decoded) <= 5 * 4 + 4 for _, _, decoded, _ in read["resumed"])  # each rank's rest, not 8 steps
    assert read["resumed"][0][3] == read["resumed"][1][3] == read["straight"][0][3]
