"""``python -m hf_robust_distill.hub <folder> <repo_id>``: push a trained student with its card."""

from .push import main

if __name__ == "__main__":
    main()
