"""``VQDiscretizer``: images to their VQ reconstruction (encode, quantise, decode) with a
``diffusers.VQModel``, in [0, 1] pixel space and never differentiated."""

from __future__ import annotations

import json
import os

import torch
from diffusers import VQModel

from ...models.loading import checkpoint_exists

INPUT_RANGES = ("[-1,1]", "[0,1]")
DISCRETIZER_CONFIG = "vq_discretizer.json"
"""Written beside a VQ checkpoint by ``VQDiscretizer.save_pretrained``; records the input range."""


def _read_saved_range(name_or_path: str, subfolder: str | None) -> str | None:
    folder = os.path.join(name_or_path, subfolder or "")
    path = os.path.join(folder, DISCRETIZER_CONFIG)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f).get("input_range")
    return None


class VQDiscretizer:
    """Discretizes [0, 1] images through a VQ model: ``x -> decode(quantize(encode(x)))``.

    ``input_range`` is what the VQ model was trained on: ``"[-1,1]"`` (the LDM/Kandinsky
    VQGANs, DAD's OpenImages f8) or ``"[0,1]"`` (aMUSEd). Images are mapped into it, and the
    reconstruction is mapped back and clamped to [0, 1]. Calls run under ``no_grad`` in chunks of
    ``chunk_size`` images, in ``dtype``.
    """
    def __init__(self, vq_model: VQModel, input_range: str = "[-1,1]", chunk_size: int = 64,
                 dtype: torch.dtype | None = None):
        if input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
        config = vq_model.config
        if config.in_channels != 3 or config.out_channels != 3:
            raise ValueError(f"the VQ model maps {config.in_channels} to {config.out_channels} channels; "
                             "discretizing RGB images needs a VQ model with 3 input and 3 output channels")
        self.vq = vq_model.eval().requires_grad_(False)
        if dtype is not None:
            self.vq.to(dtype)
        self.input_range = input_range
        self.chunk_size = chunk_size

    @classmethod
    def from_pretrained(cls, name_or_path: str, subfolder: str | None = None, input_range: str | None = None,
                        chunk_size: int = 64, dtype: torch.dtype | None = None, device=None,
                        **kwargs) -> VQDiscretizer:
        """Loads a ``VQModel`` (Hub id or path, optionally a ``subfolder`` such as ``"vqvae"``).

        ``input_range`` defaults to the one saved by ``save_pretrained``; a checkpoint that
        records none needs it stated.
        """
        input_range = input_range or _read_saved_range(name_or_path, subfolder)
        if input_range is None:
            raise ValueError(
                f"the input range of the VQ model {name_or_path!r} is unknown: pass input_range='[-1,1]' "
                "(LDM, Kandinsky and DAD's OpenImages VQGANs) or input_range='[0,1]' (aMUSEd)")
        vq = VQModel.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)
        if device is not None:
            vq.to(device)
        return cls(vq, input_range=input_range, chunk_size=chunk_size, dtype=dtype)

    def save_pretrained(self, save_directory: str) -> None:
        self.vq.save_pretrained(save_directory)
        with open(os.path.join(save_directory, DISCRETIZER_CONFIG), "w") as f:
            json.dump({"input_range": self.input_range}, f, indent=2)

    @property
    def device(self) -> torch.device:
        return next(self.vq.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vq.parameters()).dtype

    def to(self, *args, **kwargs) -> VQDiscretizer:
        self.vq.to(*args, **kwargs)
        return self

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1 if self.input_range == "[-1,1]" else x

    def _from_model(self, y: torch.Tensor) -> torch.Tensor:
        y = (y + 1) / 2 if self.input_range == "[-1,1]" else y
        return y.clamp(0.0, 1.0)

    def nearest_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices of the codes nearest the (B, c, h, w) latents, searched in float32
        whatever the model's dtype or autocast: in bf16 the rounded distances pick another code for
        about one latent in nine of a 16384-code book."""
        quantizer = self.vq.quantize
        if getattr(quantizer, "remap", None) is not None:
            raise ValueError("the VQ model remaps its codes (VectorQuantizer.remap), which the discretizer does not "
                             "read; convert it without remapping")
        b, c, h, w = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, c)
        with torch.autocast(latents.device.type, enabled=False):
            distances = torch.cdist(flat.float(), quantizer.embedding.weight.float())
        return distances.argmin(dim=1).reshape(b, h, w)

    def _discretize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.vq.encode(self._to_model(x)).latents
        indices = self.nearest_codes(latents)
        b, c, h, w = latents.shape
        quantized = self.vq.quantize.embedding(indices).permute(0, 3, 1, 2).to(latents.dtype)
        if self.vq.config.lookup_from_codebook:  # decode() reads code indices
            decoded = self.vq.decode(indices.reshape(b, -1), force_not_quantize=True, shape=(b, h, w, c)).sample
        else:
            decoded = self.vq.decode(quantized, force_not_quantize=True).sample
        return self._from_model(decoded), indices

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, return_indices: bool = False):
        """The reconstruction of (B, 3, H, W) images in [0, 1], in the input's dtype and on its
        device; with ``return_indices`` also the (B, h, w) code indices."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(images.shape)}")
        out, codes = [], []
        for chunk in images.split(self.chunk_size):
            recon, indices = self._discretize(chunk.to(self.device, self.dtype))
            out.append(recon.to(images.device, images.dtype))
            codes.append(indices.to(images.device))
        recon = torch.cat(out)
        return (recon, torch.cat(codes)) if return_indices else recon


def read_vq_config(name_or_path: str, subfolder: str | None, input_range: str | None) -> dict:
    """The ``diffusers.VQModel`` config of a VQ checkpoint (no weights), with its input range known."""
    from diffusers import VQModel

    checkpoint_exists(name_or_path, "the VQ model", subfolder)
    try:
        config = VQModel.load_config(name_or_path, subfolder=subfolder)
    except (OSError, ValueError, EnvironmentError) as error:
        if not os.path.isdir(name_or_path):  # a missing folder reads as a Hub id too: say both
            raise ValueError(f"the VQ model {name_or_path!r} is no folder here ({os.getcwd()}), and read as a Hub id "
                             f"it gives: {str(error).splitlines()[0]}; give the folder python -m "
                             "hf_robust_distill.convert_vqgan wrote (docs/dad.md), or the Hub id of a diffusers "
                             "VQModel") from None
        raise ValueError(f"cannot read the VQ model {name_or_path!r}"
                         + (f" (subfolder {subfolder!r})" if subfolder else "")
                         + f": {str(error).splitlines()[0]}; give a diffusers VQModel folder (config.json and weights)"
                         + (", with --vq_subfolder if it is nested" if not subfolder else "")) from None
    if input_range is not None and input_range not in INPUT_RANGES:
        raise ValueError(f"--vq_input_range is one of {', '.join(INPUT_RANGES)}, got {input_range!r}")
    saved = _read_saved_range(name_or_path, subfolder)
    if input_range is not None and saved is not None and input_range != saved:
        raise ValueError(f"--vq_input_range {input_range} contradicts the {saved} saved with the VQ model "
                         f"({DISCRETIZER_CONFIG}): drop the flag, or fix the saved file if it is wrong")
    if (input_range or saved) is None:
        raise ValueError(f"the input range of the VQ model {name_or_path!r} is unknown: pass --vq_input_range "
                         "'[-1,1]' (LDM, Kandinsky and DAD's OpenImages VQGANs) or '[0,1]' (aMUSEd)")
    return config
