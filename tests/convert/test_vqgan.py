"""The VQGAN converter against the published taming-transformers architecture.

``TamingVQModel`` below is the forward of taming's ``VQModel`` (``taming/models/vqgan.py`` with
``taming/modules/diffusionmodules/model.py`` and ``taming/modules/vqvae/quantize.py``), written
out with its parameter names, so a checkpoint of that layout can be made here with random weights.
"""

import os

import pytest
import torch
import yaml
from torch import nn

from hf_robust_distill import VQDiscretizer
from hf_robust_distill.convert.vqgan import convert, main


def normalize(channels):
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm1, self.conv1 = normalize(in_channels), nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2, self.conv2 = normalize(out_channels), nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = normalize(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
        weights = torch.softmax(torch.bmm(q, k.reshape(b, c, hh * ww)) * c**-0.5, dim=2)
        out = torch.bmm(v.reshape(b, c, hh * ww), weights.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(nn.functional.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels, **_):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in, res = ch, resolution
        for level, mult in enumerate(ch_mult):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
                if res in attn_resolutions:
                    down.attn.append(AttnBlock(block_in))
            if level != len(ch_mult) - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (ResnetBlock(block_in, block_in), AttnBlock(block_in),
                                                               ResnetBlock(block_in, block_in))
        self.norm_out, self.conv_out = normalize(block_in), nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, **_):
        super().__init__()
        block_in, res = ch * ch_mult[-1], resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (ResnetBlock(block_in, block_in), AttnBlock(block_in),
                                                               ResnetBlock(block_in, block_in))
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, ch * ch_mult[level]))
                block_in = ch * ch_mult[level]
                if res in attn_resolutions:
                    up.attn.append(AttnBlock(block_in))
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            self.up.insert(0, up)
        self.norm_out, self.conv_out = normalize(block_in), nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_e, e_dim):
        super().__init__()
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, z.shape[-1])
        d = (flat**2).sum(1, keepdim=True) + (self.embedding.weight**2).sum(1) - 2 * flat @ self.embedding.weight.t()
        indices = d.argmin(1)
        return self.embedding(indices).view(z.shape).permute(0, 3, 1, 2).contiguous(), indices


class TamingVQModel(nn.Module):
    def __init__(self, ddconfig, n_embed, embed_dim):
        super().__init__()
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def forward(self, x):
        quant, indices = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(quant)), indices


def taming_layout(tmp_path, target, ch_mult, attn_resolutions, n_embed):
    """A small checkpoint and config of the taming layout, with random weights (and a loss part)."""
    ddconfig = dict(double_z=False, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=ch_mult,
                    num_res_blocks=1, attn_resolutions=attn_resolutions, dropout=0.0)
    torch.manual_seed(0)
    reference = TamingVQModel(ddconfig, n_embed, embed_dim=4).eval()
    with torch.no_grad():
        for p in reference.parameters():  # past their initial zeros and ones, so that every weight shows
            p.add_(torch.randn_like(p) * 0.02)
        reference.quantize.embedding.weight.normal_()
    state = {**reference.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(1)}
    torch.save({"state_dict": state, "global_step": 0}, tmp_path / "model.ckpt")
    config = {"model": {"target": target, "params": {"embed_dim": 4, "n_embed": n_embed, "ddconfig": ddconfig}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return reference


@pytest.mark.parametrize("target, ch_mult, attn_resolutions, n_embed", [
    ("taming.models.vqgan.VQModel", [1, 2, 2, 2], [4], 16384),         # f8, attention in the lowest level
    ("ldm.models.autoencoder.VQModelInterface", [1, 2, 2], [16], 8192),  # f4, attention in a middle level
    ("taming.models.vqgan.VQModel", [1, 1, 2, 2, 4], [], 1024),          # f16, mid-block attention only
])
def test_the_converted_model_reconstructs_as_the_original(tmp_path, target, ch_mult, attn_resolutions, n_embed):
    reference = taming_layout(tmp_path, target, ch_mult, attn_resolutions, n_embed)
    out = tmp_path / "converted"
    main([str(tmp_path / "model.ckpt"), str(tmp_path / "config.yaml"), str(out)])
    discretizer = VQDiscretizer.from_pretrained(str(out))  # the input range comes from vq_discretizer.json
    assert discretizer.input_range == "[-1,1]"
    model = discretizer.vq.double()
    reference = reference.double()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected, indices = reference(images)
        latents = model.encode(images).latents
        _, _, (_, _, ours) = model.quantize(latents)
        reconstruction = model.decode(latents).sample
    assert torch.equal(ours.flatten(), indices)
    torch.testing.assert_close(reconstruction, expected, rtol=1e-7, atol=1e-9)
    with torch.no_grad():  # and through the discretizer, in [0, 1] pixels
        torch.testing.assert_close(discretizer(((images + 1) / 2).float()).double(), ((expected + 1) / 2).clamp(0, 1),
                                   rtol=1e-4, atol=1e-4)


def test_bad_inputs_are_named(tmp_path):
    taming_layout(tmp_path, "taming.models.vqgan.VQModel", [1, 2], [], 64)
    kl = yaml.safe_load((tmp_path / "config.yaml").read_text())
    kl["model"]["target"] = "ldm.models.autoencoder.AutoencoderKL"
    (tmp_path / "kl.yaml").write_text(yaml.safe_dump(kl))
    with pytest.raises(ValueError, match="not a VQ model"):
        convert(str(tmp_path / "model.ckpt"), str(tmp_path / "kl.yaml"), str(tmp_path / "out"))
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="quantize.embedding.weight"):
        convert(str(tmp_path / "other.ckpt"), str(tmp_path / "config.yaml"), str(tmp_path / "out"))
    wider = yaml.safe_load((tmp_path / "config.yaml").read_text())
    wider["model"]["params"]["ddconfig"]["ch"] = 64
    (tmp_path / "wider.yaml").write_text(yaml.safe_dump(wider))
    with pytest.raises(ValueError, match="does not fit"):
        convert(str(tmp_path / "model.ckpt"), str(tmp_path / "wider.yaml"), str(tmp_path / "out"))
    lightning = torch.load(tmp_path / "model.ckpt", weights_only=True)
    lightning["callbacks"] = {"a Lightning object": Downsample(32)}  # Python objects beside the weights
    torch.save(lightning, tmp_path / "lightning.ckpt")
    with pytest.raises(ValueError, match="--allow_pickle"):
        convert(str(tmp_path / "lightning.ckpt"), str(tmp_path / "config.yaml"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")  # nothing written for a checkpoint that does not convert
    convert(str(tmp_path / "lightning.ckpt"), str(tmp_path / "config.yaml"), str(tmp_path / "out"), allow_pickle=True)
    assert os.path.isfile(tmp_path / "out" / "vq_discretizer.json")
