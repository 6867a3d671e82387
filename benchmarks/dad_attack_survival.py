"""How much of DAD's attack survives the second pass through the VQ model, by L2 budget and image
size: the teacher's accuracy on clean images x, on VQ(x), on VQ(VQ(x)) (the attack with a zero
budget) and on the DAD images VQ(PGD(VQ(x))) at each budget (one step of the whole budget, random
start as the recipe draws it), and how far the DAD images lie from VQ(VQ(x)). An attack the VQ model
erases leaves DAD's images equal to VQ(VQ(x)) whatever the budget: the budget only matters once it
survives.

    python benchmarks/dad_attack_survival.py                     # the digits at 32 and 64 px
    python benchmarks/dad_attack_survival.py --sizes 224 --eps 0.1 1 4 16 --teacher <classifier> \
        --vq vqgan-openimages-f8-16384 --dataset_name <imagenet-1k on the Hub>

Prints one JSON object. By default each size gets its own teacher and VQ model, trained at that size
and built once into the demo zoo: ``dad_defaults.py``'s robust digits teacher and the demo's VQ
model, so that sizes differ in nothing else. A ``--teacher`` or ``--vq`` given serves every size (a
teacher resizes other sizes at its door).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def images_at(size: int, count: int, dataset_name: str | None = None, split: str = "validation"):
    import torch

    from hf_robust_distill.data import demo_digits, load_image_dataset, prepare_dataset

    split_rows = demo_digits()["test"] if dataset_name is None else load_image_dataset(dataset_name)[split]
    rows = prepare_dataset(split_rows.select(range(min(count, len(split_rows)))), (size, size))
    pixels = torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]).float()
    return pixels / 255 if pixels.max() > 1.5 else pixels, torch.tensor([r["labels"] for r in rows])


def survival(classifier, vq, pixels, labels, budgets) -> dict:
    import torch

    from hf_robust_distill.methods.dad import AttackSettings, dad_images

    def accuracy(images) -> float:
        with torch.no_grad():
            return round(100 * float((classifier(images).argmax(-1) == labels).float().mean()), 2)

    with torch.no_grad():
        once = vq(pixels)
        twice = vq(once)
    result = {"clean": accuracy(pixels), "vq": accuracy(once), "vq_twice": accuracy(twice), "budgets": {}}
    for eps in budgets:
        attack = AttackSettings(norm="l2", eps=eps, steps=1, step_size=eps, random_start_prob=0.8)
        dad = dad_images(classifier, vq, pixels, labels, attack, generator=torch.Generator().manual_seed(0))
        moved = (dad - twice).flatten(1).norm(dim=1).mean()
        result["budgets"][str(eps)] = {"teacher_accuracy": accuracy(dad), "l2_from_vq_twice": round(float(moved), 3),
                                       "per_pixel_rms_budget": round(eps / pixels[0].numel() ** 0.5, 5)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--teacher", help="an image classifier of the data's classes (default: the robust digits "
                                          "teacher, trained at each size)")
    parser.add_argument("--vq", help="a VQ model folder as recipes/dad.py takes it (default: the demo's, trained at "
                                     "each size)")
    parser.add_argument("--dataset_name", help="images of the teacher's classes (default: the digits)")
    parser.add_argument("--split", default="validation")
    opts = parser.parse_args()
    import torch

    results = {}
    for size in opts.sizes:
        teacher_path, vq_path = models_at(size, opts.teacher, opts.vq)
        torch.manual_seed(0)
        results[size] = {"teacher_model": os.path.basename(teacher_path), "vq_model": os.path.basename(vq_path),
                         **survival(*load_models(teacher_path, vq_path),
                                    *images_at(size, opts.images, opts.dataset_name, opts.split), opts.eps)}
    print(json.dumps({"images": opts.images, "sizes": results}))


def models_at(size: int, teacher: str | None, vq: str | None) -> tuple[str, str]:
    """The teacher's and the VQ model's folders for ``size``: those given, else the digits' own,
    trained at that size (built once into the demo zoo)."""
    from dad_defaults import robust_teacher, zoo_model

    zoo = os.path.join(ROOT, "demo_output", "zoo")
    with contextlib.redirect_stdout(sys.stderr):
        return teacher or robust_teacher(zoo, 20, size), vq or zoo_model(zoo, "vq", size)


def load_models(teacher_path: str, vq_path: str):
    from transformers import AutoImageProcessor

    from hf_robust_distill.methods.dad import VQDiscretizer
    from hf_robust_distill.models import PixelPreprocessor, PixelSpaceClassifier, load_vision_model

    classifier = PixelSpaceClassifier(load_vision_model(teacher_path).eval(), PixelPreprocessor.from_image_processor(
        AutoImageProcessor.from_pretrained(teacher_path)))  # resizes any other size to its own at its door
    return classifier, VQDiscretizer.from_pretrained(vq_path)


if __name__ == "__main__":
    main()
