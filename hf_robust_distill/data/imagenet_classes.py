"""ImageNet-1k's classes in label order: WordNet ids, WordNet names and OpenAI's curated names.

CLIP reads class names through its text tower. WordNet's ("tench, Tinca tinca", "cock") are what
the Hub's ``imagenet-1k`` labels carry; OpenAI curated the 1,000 names for CLIP ("tench",
"rooster"), and they give CLIP several points more zero-shot accuracy. DAD's official code builds
its teacher's head from them. ``imagenet_classes.tsv`` holds the three columns: the WordNet ids and
names as timm's ImageNet tables give them (Apache-2.0), the curated names as OpenAI's
``Prompt_Engineering_for_ImageNet`` notebook gives them (MIT), its two repeated names included.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Sequence

IMAGENET_1K = 1000
_RENAMED = 10  # datasets that retouch a few names still count as ImageNet-1k


@lru_cache(maxsize=None)
def imagenet_classes() -> tuple[tuple[str, str, str], ...]:
    """(wnid, WordNet name, OpenAI name) of each ImageNet-1k class, in label order."""
    lines = (resources.files(__package__) / "imagenet_classes.tsv").read_text().splitlines()
    return tuple(tuple(line.split("\t")) for line in lines[1:])


def openai_imagenet_names() -> list[str]:
    return [openai for _, _, openai in imagenet_classes()]


def _key(name: str) -> str:
    return name.replace("_", " ").split(",")[0].strip().lower()


def is_imagenet_1k(names: Sequence[str] | None) -> bool:
    """Whether ``names`` are ImageNet-1k's classes in label order, by WordNet id (an imagefolder of
    the train set), WordNet name (the Hub's ``imagenet-1k``), its first lemma, or OpenAI's name."""
    if names is None or len(names) != IMAGENET_1K:
        return False
    known = sum(_key(name) in {wnid, _key(wordnet), _key(openai)}
                for name, (wnid, wordnet, openai) in zip(names, imagenet_classes()))
    return known >= IMAGENET_1K - _RENAMED


def zero_shot_names(names: Sequence[str]) -> list[str]:
    """The names a CLIP text tower should read for classes ``names``: OpenAI's curated names for
    ImageNet-1k, the names themselves otherwise (``--class_names_file`` gives them for other data)."""
    return openai_imagenet_names() if is_imagenet_1k(names) else list(names)


def subset_names(subset: Sequence[int]) -> list[str]:
    """OpenAI's names of an ImageNet-1k class subset (ImageNet-R's or ImageNet-A's 200)."""
    names = openai_imagenet_names()
    return [names[i] for i in subset]


@lru_cache(maxsize=None)
def _index_by_key() -> dict[str, int]:
    """ImageNet-1k's index of each unambiguous spelling of a class: its WordNet id, its whole WordNet
    name, and its first lemma or OpenAI name where no other class shares them ("crane" does not)."""
    index: dict[str, int] = {}
    shared: set[str] = set()
    for i, (wnid, wordnet, openai) in enumerate(imagenet_classes()):
        index[wnid.lower()] = i
        for key in {wordnet.lower(), _key(wordnet), _key(openai)}:
            if key in index and index[key] != i:
                shared.add(key)
            index.setdefault(key, i)
    return {key: i for key, i in index.items() if key not in shared}


def imagenet_indices(names: Sequence[str] | None) -> list[int] | None:
    """ImageNet-1k's index of each class in ``names``, or ``None`` unless every one is known: class
    folders named by WordNet id (ImageNet-Sketch's, the release's), by index (ImageNet-V2's "0" to
    "999"), or classes named as ImageNet's WordNet or OpenAI names."""
    if not names:
        return None
    keys = _index_by_key()
    indices = []
    for name in names:
        text = str(name).strip()
        if text.isdigit() and int(text) < IMAGENET_1K:
            indices.append(int(text))
        elif text.lower() in keys or _key(text) in keys:
            indices.append(keys.get(text.lower(), keys.get(_key(text))))
        else:
            return None
    return indices
