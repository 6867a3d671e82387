"""Natural distribution shifts: datasets of real images whose classes are a subset of the model's.

ImageNet-R and ImageNet-A cover 200 of ImageNet-1k's classes; a 1000-way classifier is scored
on them by restricting its logits to those 200 before the argmax (Hendrycks et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGENET_R_CLASSES: tuple[int, ...] = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99, 100, 105, 107, 113,
    122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163, 171, 172, 178, 187, 195, 199, 203, 207,
    208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289,
    291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344,
    347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435, 437,
    441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570, 579, 583, 587, 593, 594,
    596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768, 774, 776, 779, 780, 787, 805, 812, 815, 820,
    824, 833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951,
    953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
)
"""The ImageNet-1k indices of ImageNet-R's 200 classes, in the order of its (sorted WordNet id) folders."""

IMAGENET_A_CLASSES: tuple[int, ...] = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96, 97, 99, 105, 107, 108,
    110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254, 277, 283, 287, 291, 295, 298, 301, 306, 307,
    308, 309, 310, 311, 313, 314, 315, 317, 319, 323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363, 372, 378, 386,
    397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461, 462, 470, 472, 483,
    486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569, 572, 573, 575, 579, 589, 606,
    607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704, 719, 736, 746, 749, 752, 758,
    763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804, 813, 815, 820, 823, 831, 833, 835, 839, 845,
    847, 850, 859, 862, 870, 879, 880, 888, 890, 897, 900, 907, 913, 924, 932, 933, 934, 937, 943, 945, 947, 951, 954,
    956, 957, 959, 971, 972, 980, 981, 984, 986, 987, 988,
)
"""The ImageNet-1k indices of ImageNet-A's 200 classes, in the order of its folders."""

CLASS_SUBSETS: dict[str, tuple[int, ...]] = {"imagenet-r": IMAGENET_R_CLASSES, "imagenet-a": IMAGENET_A_CLASSES}
"""Class subsets by name, for ``NaturalShift(class_subset="imagenet-r")``."""


@dataclass(frozen=True)
class NaturalShift:
    """A shifted test set: ``dataset`` (Hub id, imagefolder or saved dataset) and its ``split``.

    ``class_subset`` lists the model's output indices the dataset covers (or names one of
    ``CLASS_SUBSETS``); logits are restricted to them before the argmax. The dataset's labels
    are read as positions in the subset when its ``ClassLabel`` has as many classes as the
    subset (ImageNet-R's 200 folders), and as model indices otherwise.
    """

    name: str
    dataset: str
    split: str = "test"
    config: str | None = None
    class_subset: str | tuple[int, ...] | None = None

    def subset(self) -> tuple[int, ...] | None:
        if isinstance(self.class_subset, str):
            if self.class_subset not in CLASS_SUBSETS:
                raise ValueError(f"unknown class subset {self.class_subset!r}; choose from {', '.join(CLASS_SUBSETS)} "
                                 "or give the model's output indices")
            return CLASS_SUBSETS[self.class_subset]
        return None if self.class_subset is None else tuple(int(i) for i in self.class_subset)

    @classmethod
    def parse(cls, spec: str) -> NaturalShift:
        """``"name=dataset[:split]"``; names in ``CLASS_SUBSETS`` (imagenet-r, imagenet-a) bring
        their class subset, e.g. ``"imagenet-r=axiong/imagenet-r:test"``."""
        name, sep, source = spec.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ValueError(f"cannot read the natural shift {spec!r}; write name=dataset[:split]")
        dataset, _, split = source.strip().partition(":")
        name = name.strip()
        return cls(name, dataset, split or "test", class_subset=name.lower() if name.lower() in CLASS_SUBSETS else None)


def subset_predictions(logits: torch.Tensor, subset: tuple[int, ...] | None, labels_in_subset: bool) -> torch.Tensor:
    """The argmax over the subset's logits: as a position in the subset (``labels_in_subset``) or
    as the model's class index."""
    if subset is None:
        return logits.argmax(-1)
    index = torch.as_tensor(subset, device=logits.device)
    if int(index.max()) >= logits.shape[-1]:
        raise ValueError(f"the class subset reaches index {int(index.max())} but the model has {logits.shape[-1]} "
                         "outputs")
    position = logits.index_select(-1, index).argmax(-1)
    return position if labels_in_subset else index[position]
