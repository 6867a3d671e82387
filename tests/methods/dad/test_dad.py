import os

import pytest
import torch
from accelerate import PartialState
from datasets import load_dataset
from huggingface_hub import snapshot_download
from transformers import AutoImageProcessor

from tests.conftest import DIGIT_NAMES, run_in_two_processes
from hf_robust_distill import (CLIPZeroShotClassifier, DistillationConfig, RobustDistillationTrainer, VQDiscretizer,
                               generate_dad_dataset, pgd_attack)
from hf_robust_distill.data import demo_digits, prepare_dataset
from hf_robust_distill.methods.dad import AttackSettings, DADGenerator, dad_images, pair_with_dad
from hf_robust_distill.models import load_vision_model

ROWS, SHARD = 20, 8  # three shards, the last one short


@pytest.fixture(scope="module")
def clip_teacher(tiny_clip):
    return CLIPZeroShotClassifier.from_clip(tiny_clip, DIGIT_NAMES, templates="short")


@pytest.fixture(scope="module")
def discretizer(tiny_vq):
    return VQDiscretizer.from_pretrained(tiny_vq)


@pytest.fixture(scope="module")
def source():
    return demo_digits()["train"].select(range(ROWS))


def generate(teacher, discretizer, source, output_dir, **kwargs):
    return generate_dad_dataset(teacher, discretizer, source, str(output_dir), image_size=(32, 32), batch_size=3,
                                shard_size=SHARD, progress=False, **kwargs)


def rows_of(dataset):
    return [(r["index"], r["label"], r["image"].tobytes()) for r in dataset]


@pytest.fixture(scope="module")
def uninterrupted_dir(clip_teacher, discretizer, source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dad")
    generate(clip_teacher, discretizer, source, folder, teacher_logits=True)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_dir):
    return load_dataset(str(uninterrupted_dir), split="train")  # the output folder is a dataset


def test_dad_images_are_the_discretized_attack_around_the_discretized_image(clip_teacher, discretizer):
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4)
    dad = dad_images(clip_teacher, discretizer, images, labels, AttackSettings(), torch.Generator().manual_seed(0))
    base = discretizer(images)
    attacked = pgd_attack(clip_teacher, base, labels, eps=0.1, step_size=0.1, steps=1, norm="l2",
                          random_start_prob=0.8, project_center=base, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dad, discretizer(attacked), atol=0, rtol=0)
    assert dad.shape == images.shape and dad.min() >= 0 and dad.max() <= 1


def test_generation_keeps_labels_order_and_classes(uninterrupted, source):
    dad = uninterrupted
    assert len(dad) == ROWS and dad["index"] == list(range(ROWS))
    assert dad["label"] == source["label"]
    assert dad.features["label"].names == source.features["label"].names
    assert dad[0]["image"].size == (32, 32) and dad[0]["image"].mode == "RGB"
    assert len(dad[0]["teacher_logits_clean"]) == len(dad[0]["teacher_logits_dad"]) == 10


def test_generation_returns_what_it_wrote_and_pushes_it(clip_teacher, discretizer, source, uninterrupted, tmp_path,
                                                        local_hub):
    returned = generate(clip_teacher, discretizer, source, tmp_path / "out", teacher_logits=True,
                        push_to_hub="tester/digits-dad")
    assert rows_of(returned) == rows_of(uninterrupted)  # and reproducibly: same seed, same rows
    assert sorted(os.listdir(tmp_path / "out")) == ["dad_generation.json", "data"]

    pushed = local_hub.repos["datasets/tester/digits-dad"].files
    assert "README.md" in pushed and any(p.startswith("data/") and p.endswith(".parquet") for p in pushed)
    folder = snapshot_download("tester/digits-dad", repo_type="dataset", local_dir=str(tmp_path / "pulled"))
    pulled = load_dataset(folder, split="train")
    assert pulled.features == uninterrupted.features
    assert rows_of(pulled) == rows_of(uninterrupted)
    assert pulled["teacher_logits_dad"] == uninterrupted["teacher_logits_dad"]


def test_an_interrupted_generation_resumes_to_the_same_rows(clip_teacher, discretizer, source, uninterrupted,
                                                            tmp_path):
    generate(clip_teacher, discretizer, source, tmp_path, teacher_logits=True)
    shards = sorted(os.listdir(tmp_path / "data"))
    assert len(shards) == 3
    first = tmp_path / "data" / shards[0]
    first_written = os.stat(first).st_mtime_ns
    os.remove(tmp_path / "data" / shards[1])  # the run died while writing the second shard...
    (tmp_path / "data" / f"{shards[1]}.tmp-0-999").write_bytes(b"half a parquet file")  # ...leaving this
    resumed = generate(clip_teacher, discretizer, source, tmp_path, teacher_logits=True)
    assert os.stat(first).st_mtime_ns == first_written  # finished shards are not redone
    assert rows_of(resumed) == rows_of(uninterrupted)
    assert resumed["teacher_logits_dad"] == uninterrupted["teacher_logits_dad"]
    with pytest.raises(ValueError, match="other settings"):
        generate(clip_teacher, discretizer, source, tmp_path, teacher_logits=False)


def generate_in_shards(clip_path, vq_path, source, output_dir):
    state = PartialState(cpu=True)
    teacher = CLIPZeroShotClassifier.from_clip(clip_path, DIGIT_NAMES, templates="short")
    generator = DADGenerator(teacher, VQDiscretizer.from_pretrained(vq_path), source, output_dir, image_size=(32, 32),
                             batch_size=3, shard_size=SHARD, state=state, progress=False)
    generator.run()
    with open(os.path.join(output_dir, f"written-by-rank{state.process_index}.txt"), "w") as f:
        f.write(" ".join(str(shard) for shard in generator.written))


def test_two_processes_write_disjoint_shards(tiny_clip, tiny_vq, clip_teacher, discretizer, source, tmp_path):
    run_in_two_processes(generate_in_shards, tiny_clip, tiny_vq, source, str(tmp_path / "two"))
    written = [set((tmp_path / "two" / f"written-by-rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert written[0] == {"0", "2"} and written[1] == {"1"}
    assert not [f for f in os.listdir(tmp_path / "two" / "data") if ".tmp" in f]
    together = load_dataset(str(tmp_path / "two"), split="train")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process had: float sums in the same order
    try:
        alone = generate(clip_teacher, discretizer, source, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    assert rows_of(together) == rows_of(alone)  # the same rows however the work was split


def test_pairing_checks_labels(uninterrupted, source):
    paired = pair_with_dad(source, uninterrupted)
    assert {"dad_image", "teacher_logits_clean"} <= set(paired.column_names)
    shuffled = source.shuffle(seed=0)
    with pytest.raises(ValueError, match="labels differ"):
        pair_with_dad(shuffled, uninterrupted)


def dad_config(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2,
                  logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, use_cpu=True,
                  distortions="clean", cls_weight=0, patch_weight=0, attn_weight=0, kd_weight=0.5, ce_weight=1,
                  dad_kd_weight=0.5)
    values.update(overrides)
    return DistillationConfig(**values)


def logged_parts(trainer):
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_online_dad_trains_with_a_clip_teacher(tiny_vit, clip_teacher, discretizer, digits, tmp_path):
    train, _ = digits
    student = load_vision_model(tiny_vit)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = RobustDistillationTrainer(model=student, teacher=clip_teacher, discretizer=discretizer,
                                        args=dad_config(tmp_path, dad_mode="online"), train_dataset=train,
                                        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    trainer.train()
    logs = logged_parts(trainer)
    assert len(logs) == 2
    for entry in logs:
        assert entry["loss"] == pytest.approx(entry["loss_ce"] + 0.5 * entry["loss_kd"] + 0.5 * entry["loss_kd_dad"],
                                              rel=1e-3, abs=1e-4)
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in clip_teacher.parameters())
    assert not os.path.exists(tmp_path / "zero_shot_head.safetensors")


def test_online_dad_adds_to_multilevel_terms_with_a_vit_teacher(tiny_vit, discretizer, digits, tmp_path):
    train, _ = digits
    args = dad_config(tmp_path, dad_mode="online", cls_weight=1, patch_weight=1, attn_weight=0.1,
                      distortions="noise:0.1-0.3")
    trainer = RobustDistillationTrainer(model=load_vision_model(tiny_vit, attention_maps=True),
                                        teacher=load_vision_model(tiny_vit, attention_maps=True), discretizer=discretizer,
                                        args=args, train_dataset=train,
                                        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    trainer.train()
    entry = logged_parts(trainer)[-1]
    assert {"loss_cls", "loss_patch", "loss_attn", "loss_kd", "loss_ce", "loss_kd_dad"} <= set(entry)


def test_offline_dad_trains_from_stored_logits_without_a_teacher(tiny_vit, uninterrupted, source, tmp_path):
    paired = prepare_dataset(pair_with_dad(source, uninterrupted), (32, 32), extra_images={"dad_image": "dad_pixel_values"},
                             extra_columns=("teacher_logits_clean", "teacher_logits_dad"))
    trainer = RobustDistillationTrainer(model=load_vision_model(tiny_vit), teacher=None,
                                        args=dad_config(tmp_path, dad_mode="offline"), train_dataset=paired,
                                        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    trainer.train()
    entry = logged_parts(trainer)[-1]
    assert {"loss_kd", "loss_ce", "loss_kd_dad"} <= set(entry)


def test_dad_needs_its_parts(tiny_vit, clip_teacher, digits, tmp_path):
    train, _ = digits
    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    with pytest.raises(ValueError, match="VQ model"):
        RobustDistillationTrainer(model=load_vision_model(tiny_vit), teacher=clip_teacher, train_dataset=train,
                                  args=dad_config(tmp_path, dad_mode="online"), processing_class=processor)
    with pytest.raises(ValueError, match="logits only"):
        RobustDistillationTrainer(model=load_vision_model(tiny_vit), teacher=clip_teacher, train_dataset=train,
                                  args=dad_config(tmp_path, dad_mode="none", dad_kd_weight=0, cls_weight=1),
                                  processing_class=processor)
    with pytest.raises(ValueError, match="needs dad_kd_weight"):
        dad_config(tmp_path, dad_mode="online", dad_kd_weight=0)
    with pytest.raises(ValueError, match="need dad_mode"):
        dad_config(tmp_path)


def test_offline_dad_reads_a_generated_folder_a_saved_dataset_and_a_hub_id(uninterrupted_dir, uninterrupted, tmp_path,
                                                                          local_hub):
    """Today a generated folder is read as an imagefolder ('Instruction "train" corresponds to no
    data') and a leftover temporary shard breaks load_dataset(<folder>)."""
    import shutil

    from hf_robust_distill.methods.dad import load_dad_source

    folder = shutil.copytree(uninterrupted_dir, tmp_path / "generated")
    (folder / "data" / ".train-00001-of-00003.parquet.tmp-0-4242").write_bytes(b"half a shard")  # an interrupted run
    assert rows_of(load_dad_source(str(folder))) == rows_of(uninterrupted)
    assert rows_of(load_dataset(str(folder), split="train")) == rows_of(uninterrupted)

    uninterrupted.save_to_disk(str(tmp_path / "saved"))
    assert rows_of(load_dad_source(str(tmp_path / "saved"))) == rows_of(uninterrupted)

    uninterrupted.push_to_hub("tester/digits-dad-pushed")
    assert rows_of(load_dad_source("tester/digits-dad-pushed")) == rows_of(uninterrupted)

    with pytest.raises(ValueError, match="not a DAD dataset"):
        load_dad_source(str(_imagefolder(tmp_path / "photos")))


def _imagefolder(path):
    from PIL import Image

    (path / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(path / "a" / "0.png")
    return path


def test_generation_cleans_what_an_interrupted_run_left(clip_teacher, discretizer, source, uninterrupted, tmp_path):
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    leftovers = [out / "data" / "train-00000-of-00003.parquet.tmp-0-77", out / "data" / ".train-00001-of-00003.parquet.tmp-0-77"]
    for path in leftovers:
        path.write_bytes(b"partial")
    generate(clip_teacher, discretizer, source, out, teacher_logits=True)
    assert not any(path.exists() for path in leftovers)
    assert rows_of(load_dataset(str(out), split="train")) == rows_of(uninterrupted)


def test_the_official_objective_is_ce_and_kd_over_the_joint_batch(tiny_vit, clip_teacher, uninterrupted, source,
                                                                  tmp_path):
    """0.75 SoftCE + 0.25 T^2 KL over clean and DAD images together, as the official main.py runs
    it: the logged terms equal those computed by hand on the joint batch of the first step."""
    paired = prepare_dataset(pair_with_dad(source, uninterrupted), (32, 32),
                             extra_images={"dad_image": "dad_pixel_values"})
    args = dad_config(tmp_path, dad_mode="offline", dad_objective="official", ce_weight=0.75, kd_weight=0.25,
                      dad_kd_weight=0.0, max_steps=1, learning_rate=0.0)
    student = load_vision_model(tiny_vit)
    trainer = RobustDistillationTrainer(model=student, teacher=clip_teacher, args=args, train_dataset=paired,
                                        processing_class=AutoImageProcessor.from_pretrained(tiny_vit))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.train()
    entry = logged_parts(trainer)[-1]
    assert "loss_kd_dad" not in entry and "loss_ce_dad" not in entry
    joint = torch.cat([batch["pixel_values"], batch["dad_pixel_values"]])
    labels = torch.cat([batch["labels"], batch["labels"]])
    with torch.no_grad():
        logits = student(pixel_values=trainer.student_pixels(joint)).logits
        teacher_logits = clip_teacher(joint)
    from hf_robust_distill.methods import ce_loss, kd_loss

    assert entry["loss_ce"] == pytest.approx(ce_loss(logits, labels).item(), rel=1e-4)
    assert entry["loss_kd"] == pytest.approx(kd_loss(logits, teacher_logits, 4.0).item(), rel=1e-4)
    with pytest.raises(ValueError, match="dad_kd_weight and dad_ce_weight to 0"):
        dad_config(tmp_path, dad_mode="offline", dad_objective="official")
    with pytest.raises(ValueError, match="dad_mode"):
        dad_config(tmp_path, dad_objective="official", dad_kd_weight=0)
