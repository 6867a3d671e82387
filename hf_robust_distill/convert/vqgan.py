"""A taming-transformers ``VQModel`` or LDM ``VQModelInterface`` checkpoint (DAD's and DAT's
``vqgan_openimages_f8_16384``, and the other f4/f8/f16 VQGANs, 8192 or 16384 codes) as a diffusers
``VQModel`` folder that ``VQDiscretizer.from_pretrained`` reads, its input range saved beside it.

    python -m hf_robust_distill.convert_vqgan model.ckpt config.yaml out_dir [--input_range "[-1,1]"]

The encoder and decoder have the layout diffusers' own LDM converter maps
(``convert_ldm_vae_checkpoint``, written for the KL autoencoders); what those lack is mapped here:
attention inside a resolution level (``attn_resolutions``), and the codebook. The training losses'
weights (discriminator, LPIPS) are left out. The reconstruction equals the original module's
(``tests/convert/test_vqgan.py`` runs the published architecture beside it).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re

import torch
import yaml
from diffusers import VQModel

from ..methods.dad.discretize import INPUT_RANGES, VQDiscretizer

FAMILIES = ("taming.models.vqgan.VQModel", "ldm.models.autoencoder.VQModel", "ldm.models.autoencoder.VQModelInterface")


def read_config(path: str) -> dict:
    """``model.params`` of a taming or LDM config, checked to be a VQ model's."""
    with open(path) as f:
        config = yaml.safe_load(f)
    model = (config or {}).get("model", {})
    target = model.get("target", "")
    if target not in FAMILIES:
        raise ValueError(f"{path} configures {target or 'no model'}, not a VQ model of taming or LDM "
                         f"({', '.join(FAMILIES)})")
    params = model.get("params", {})
    missing = [k for k in ("ddconfig", "n_embed", "embed_dim") if k not in params]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} under model.params")
    return params


def diffusers_config(params: dict) -> dict:
    """The ``VQModel`` config of a taming/LDM ``model.params``."""
    dd = params["ddconfig"]
    mult = list(dd["ch_mult"])
    if dd.get("double_z", False):
        raise ValueError("the config has double_z: true, a KL autoencoder's encoder, not a VQ model's")
    resolutions = [dd["resolution"] // 2**i for i in range(len(mult))]
    attention = [r in dd.get("attn_resolutions", []) for r in resolutions]
    return dict(
        in_channels=dd["in_channels"], out_channels=dd["out_ch"],
        down_block_types=["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attention],
        up_block_types=["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attention)],
        block_out_channels=[dd["ch"] * m for m in mult], layers_per_block=dd["num_res_blocks"], act_fn="silu",
        latent_channels=dd["z_channels"], sample_size=dd["resolution"], num_vq_embeddings=params["n_embed"],
        norm_num_groups=32, vq_embed_dim=params["embed_dim"],
    )


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """taming/LDM names to diffusers' ``VQModel`` names."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, update_vae_attentions_ldm_to_diffusers

    model = {k: v for k, v in state_dict.items() if not k.startswith("loss.")}
    converted = convert_ldm_vae_checkpoint(model, config)
    level_attention = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.attn\.(\d+)\.")
    converted = {k: v for k, v in converted.items() if not level_attention.match(k)}  # passed through unmapped
    levels = len(config["block_out_channels"])
    for key in model:
        found = level_attention.match(key)
        if found is None:
            continue
        part, level, index = found.group(1), int(found.group(2)), found.group(3)
        old = f"{part}.{level}.attn.{index}"
        new = (f"encoder.down_blocks.{level}.attentions.{index}" if part == "encoder.down"
               else f"decoder.up_blocks.{levels - 1 - level}.attentions.{index}")  # diffusers counts up from the bottom
        update_vae_attentions_ldm_to_diffusers([key], converted, model, {"old": old, "new": new})
    converted["quantize.embedding.weight"] = model["quantize.embedding.weight"]
    return converted


def convert(checkpoint: str, config_file: str, output_dir: str, input_range: str = "[-1,1]",
            allow_pickle: bool = False) -> VQModel:
    """Writes ``output_dir`` (a diffusers ``VQModel`` and ``vq_discretizer.json``) and returns the model.

    A ``.ckpt`` is a pickle; it is read with ``weights_only`` unless ``allow_pickle`` (a Lightning
    checkpoint carries Python objects beside its weights: only for files you trust)."""
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
    config = diffusers_config(read_config(config_file))
    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{checkpoint} holds Python objects beside its weights (a Lightning checkpoint), and reading "
                         "them runs its pickle: pass --allow_pickle (allow_pickle=True) for a file you trust") from error
    state_dict = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state_dict, dict) or "quantize.embedding.weight" not in state_dict:
        raise ValueError(f"{checkpoint} holds no VQ model's weights (no quantize.embedding.weight); give the .ckpt "
                         "of a taming VQModel or an LDM VQModelInterface")
    model = VQModel(**config)
    try:
        missing, unexpected = model.load_state_dict(convert_state_dict(state_dict, config), strict=False)
    except (RuntimeError, KeyError) as error:  # weights of other shapes, or another layout
        raise ValueError(f"{checkpoint} does not fit {config_file}: {str(error).splitlines()[0]}") from error
    if missing or unexpected:
        raise ValueError(f"{checkpoint} does not fit {config_file}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    discretizer = VQDiscretizer(model.eval(), input_range=input_range)
    os.makedirs(output_dir, exist_ok=True)
    discretizer.save_pretrained(output_dir)
    return model


def main(argv: list[str] | None = None) -> None:
    summary = " ".join(__doc__.split("\n\n")[0].split()).replace("``", "")
    parser = argparse.ArgumentParser(prog="python -m hf_robust_distill.convert_vqgan", description=summary,
                                     epilog="Where the checkpoint comes from: docs/dad.md.")
    parser.add_argument("checkpoint", help="the .ckpt of a taming VQModel or an LDM VQModelInterface")
    parser.add_argument("config", help="its YAML config (model.target and model.params)")
    parser.add_argument("output_dir")
    parser.add_argument("--input_range", default="[-1,1]", choices=list(INPUT_RANGES),
                        help="the range the VQGAN was trained on ([-1,1] for taming and LDM)")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="read a checkpoint that holds Python objects beside its weights (trusted files only)")
    args = parser.parse_args(argv)
    missing = [f"no file {path!r} ({what})" for path, what in ((args.checkpoint, "the checkpoint"),
                                                                (args.config, "its config"))
               if not os.path.isfile(path)]
    if os.path.isfile(args.output_dir):
        missing.append(f"{args.output_dir!r} is a file: give a folder to write the converted model into")
    if missing:
        parser.error("; ".join(missing) + " (where the checkpoint and config come from: docs/dad.md)")
    try:
        convert(args.checkpoint, args.config, args.output_dir, args.input_range, args.allow_pickle)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {args.output_dir}: load it with --vq_name_or_path {args.output_dir}")


if __name__ == "__main__":
    main()
