"""``python -m hf_robust_distill.convert_vqgan``: kept where it always was; the converter lives in
``hf_robust_distill.methods.dad.convert_vqgan``."""

from .methods.dad.convert_vqgan import main

if __name__ == "__main__":
    main()
