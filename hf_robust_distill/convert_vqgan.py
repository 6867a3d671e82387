"""``python -m hf_robust_distill.convert_vqgan``: kept where it always was; the converter lives in
``hf_robust_distill.convert.vqgan``."""

from .convert.vqgan import main

if __name__ == "__main__":
    main()
