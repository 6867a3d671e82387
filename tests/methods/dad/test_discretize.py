import json
import os

import pytest
import torch
from diffusers import VQModel

from hf_robust_distill import VQDiscretizer
from hf_robust_distill.cli import demo_vq_model


@pytest.mark.parametrize("input_range", ["[-1,1]", "[0,1]"])
def test_equals_vqmodel_forward_through_the_input_range(tiny_vq, input_range):
    discretizer = VQDiscretizer.from_pretrained(tiny_vq, input_range=input_range, chunk_size=3)
    vq = VQModel.from_pretrained(tiny_vq).eval()
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if input_range == "[-1,1]":
            expected = ((vq(images * 2 - 1).sample + 1) / 2).clamp(0, 1)
        else:
            expected = vq(images).sample.clamp(0, 1)
    recon, codes = discretizer(images, return_indices=True)
    torch.testing.assert_close(recon, expected, atol=1e-5, rtol=1e-5)
    assert codes.shape == (5, 8, 8) and codes.max() < 64
    assert not recon.requires_grad and recon.min() >= 0 and recon.max() <= 1


def test_range_is_saved_and_unknown_ranges_fail(tiny_vq, tmp_path):
    with open(os.path.join(tiny_vq, "vq_discretizer.json")) as f:
        assert json.load(f) == {"input_range": "[-1,1]"}
    assert VQDiscretizer.from_pretrained(tiny_vq).input_range == "[-1,1]"
    VQModel.from_pretrained(tiny_vq).save_pretrained(str(tmp_path))  # a plain diffusers checkpoint
    with pytest.raises(ValueError, match="input range .* is unknown"):
        VQDiscretizer.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="input_range must be"):
        VQDiscretizer.from_pretrained(str(tmp_path), input_range="[0,255]")


def test_channels_that_do_not_fit_fail():
    grey = VQModel(in_channels=1, out_channels=1, block_out_channels=(32,), norm_num_groups=8, latent_channels=4)
    with pytest.raises(ValueError, match="3 input and 3 output channels"):
        VQDiscretizer(grey)


def test_lower_precision_and_chunks_agree():
    torch.manual_seed(0)
    vq = demo_vq_model(num_codes=64)
    images = torch.rand(4, 3, 32, 32)
    whole = VQDiscretizer(vq, chunk_size=64)(images)
    torch.testing.assert_close(VQDiscretizer(vq, chunk_size=1)(images), whole)
    half = VQDiscretizer(demo_vq_model(num_codes=64), dtype=torch.bfloat16)(images)
    assert half.dtype == torch.float32 and half.shape == images.shape


def test_the_code_search_runs_in_float32_whatever_the_models_dtype(tiny_vq):
    """A 16384-code book of dim 4 (DAD's VQ-f8): in bf16, diffusers' own search (cdist, argmin) picks
    another code for a share of the latents; the discretizer's search equals the float32 one."""
    discretizer = VQDiscretizer.from_pretrained(tiny_vq)
    generator = torch.Generator().manual_seed(0)
    discretizer.vq.quantize.embedding = torch.nn.Embedding(16384, 4)
    discretizer.vq.quantize.embedding.weight.data = torch.randn(16384, 4, generator=generator)
    discretizer.to(torch.bfloat16)
    latents = torch.randn(4, 4, 16, 16, generator=generator).bfloat16()
    book = discretizer.vq.quantize.embedding.weight.float()
    exact = torch.cdist(latents.float().permute(0, 2, 3, 1).reshape(-1, 4), book).argmin(1).reshape(4, 16, 16)
    assert torch.equal(discretizer.nearest_codes(latents), exact)
    with torch.no_grad():
        _, _, (_, _, in_bf16) = discretizer.vq.quantize(latents)
    assert (in_bf16.reshape(-1) != exact.reshape(-1)).float().mean() > 0.02
