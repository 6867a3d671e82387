"""The embedded demo of both methods in one process, what ``make demo`` runs: the multi-level ViT
distillation recipe, then the DAD recipe, each on its embedded default (scikit-learn's digits, the
tiny demo zoo, two CPU cores, no network).

    python recipes/demo.py

The same as ``python recipes/multilevel.py`` followed by ``python recipes/dad.py``, with torch,
transformers and datasets imported once. The recipes share the demo zoo (``demo_output/zoo``) and
the cached corrupted evaluation sets (``demo_output/corrupted``).
"""

import argparse

import dad
import multilevel


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " It takes no flags: each recipe's "
                                     "own --help lists what a real run sets.")
    parser.parse_args(argv)
    return {"multilevel": multilevel.main([]), "dad": dad.main([])}


if __name__ == "__main__":
    main()
