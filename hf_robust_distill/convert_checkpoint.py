"""``python -m hf_robust_distill.convert_checkpoint``: a published timm/torchvision classifier as a
transformers folder (``hf_robust_distill.convert.checkpoint``)."""

from .convert.checkpoint import main

if __name__ == "__main__":
    main()
