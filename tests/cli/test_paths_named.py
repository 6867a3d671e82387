"""Paths and ids a new user types as the docs show them: a missing checkpoint, a VQ folder not made
yet, README's literal ``<you>/<name>``, an evaluation's unnamed output folder. Each is named, with
its fix, before any work; none ends in a traceback."""

import logging
import os

import pytest

from hf_robust_distill.hub.push import main as push_main
from hf_robust_distill.convert.vqgan import main as convert_main
from hf_robust_distill.convert.vqgan import diffusers_config, read_config
from hf_robust_distill.methods.dad.discretize import read_vq_config
from tests.conftest import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_converter_names_every_missing_file_and_where_they_come_from(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        convert_main([str(tmp_path / "last.ckpt"), str(tmp_path / "config.yaml"), str(tmp_path / "out")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "last.ckpt" in err and "(the checkpoint)" in err and "config.yaml" in err and "(its config)" in err
    assert "docs/dad.md" in err and "Traceback" not in err and not os.path.exists(tmp_path / "out")


def test_the_converters_help_describes_it_in_whole_sentences(capsys):
    with pytest.raises(SystemExit):
        convert_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(DAD's and DAT's vqgan_openimages_f8_16384, and the other f4/f8/f16 VQGANs, 8192 or 16384 codes)" in text
    assert "its input range saved beside it." in text and "docs/dad.md" in text


def test_the_shipped_config_is_the_official_dad_vqgans_architecture():
    config = diffusers_config(read_config(os.path.join(ROOT, "recipes", "configs", "vqgan_openimages_f8_16384.yaml")))
    assert config["num_vq_embeddings"] == 16384 and config["vq_embed_dim"] == 4 and config["latent_channels"] == 4
    assert config["block_out_channels"] == [128, 256, 256, 512]  # f8: three downsamplings
    assert config["down_block_types"] == ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"]  # attention at 32 px


def test_a_vq_folder_not_made_yet_is_named_as_a_missing_folder(tmp_path, monkeypatch):
    """It read "does not appear to have a file named config.json", as if the folder were there."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        read_vq_config("vqgan-openimages-f8-16384", None, "[-1,1]")
    message = str(error.value)
    assert "is no folder here" in message and str(tmp_path) in message and "convert_vqgan" in message


def test_the_readmes_placeholder_repo_id_is_refused_before_the_push(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        push_main([str(tmp_path), "<you>/<name>"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "is a placeholder" in err and "retry" not in err
    with pytest.raises(SystemExit):
        push_main([str(tmp_path / "no-student"), "jane/vit-b16-robust"])
    assert "no folder" in capsys.readouterr().err


def test_an_evaluation_says_where_it_writes(tiny_vit, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        load_recipe("evaluate_robustness").main([
            "--model_name_or_path", tiny_vit, "--robustness_corruptions", "contrast", "--robustness_severities", "1",
            "--max_eval_samples", "8", "--corruption_cache_dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert f"the report and its plot go into {tmp_path / 'robustness'}" in caplog.text
    assert os.path.isfile(tmp_path / "robustness" / "robustness_report.json")


def test_released_images_without_their_clean_set_are_refused_before_any_work(tmp_path):
    """It took the embedded digits as the clean set, then refused the model for lacking their classes."""
    from hf_robust_distill.utils import PreflightError

    release = tmp_path / "ImageNet-C" / "contrast" / "1" / "n01440764"
    release.mkdir(parents=True)
    with pytest.raises(PreflightError) as error:
        load_recipe("evaluate_robustness").main(["--model_name_or_path", str(tmp_path / "any-model"), "--imagenet_c",
                                                 str(tmp_path / "ImageNet-C"), "--output_dir", str(tmp_path / "out")])
    found = dict(error.value.problems)
    assert "--eval_split validation" in found["--dataset_name"] and "digits" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_an_output_folder_the_file_system_refuses_is_named_whatever_its_permission_bits():
    """As root under /sys the bits allow a folder that mkdir refuses: found out by making one."""
    from hf_robust_distill.training.checks import check_output_dir

    with pytest.raises(ValueError, match="cannot be made: '/sys' refuses a new folder"):
        check_output_dir("/sys/hf-robust-distill/out")
