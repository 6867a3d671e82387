"""``conversion.json``: where a converted model came from (the source file's name and sha256, the
layout found, the keys dropped, where its mean and std came from), which the model card cites."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

CONVERSION_FILE = "conversion.json"


@dataclass
class ConversionRecord:
    source_file: str
    source_sha256: str
    architecture: str
    model_class: str
    container: str
    layout: str
    normalisation_from: str
    evaluation_transform: dict
    keys_dropped: list[str] = field(default_factory=list)
    sizes: dict = field(default_factory=dict)
    use_ema: bool = False
    converter: str = "python -m hf_robust_distill.convert_checkpoint"

    def save(self, folder: str) -> str:
        path = os.path.join(folder, CONVERSION_FILE)
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=2)
        return path

    @classmethod
    def load(cls, folder: str) -> ConversionRecord | None:
        """The record of a converted folder, or ``None`` when the folder was not converted."""
        path = os.path.join(folder, CONVERSION_FILE)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return cls(**json.load(f))

    def summary(self) -> str:
        """One sentence for a model card."""
        dropped = f"; {len(self.keys_dropped)} keys dropped ({', '.join(self.keys_dropped[:3])}" + (
            ", ...)" if len(self.keys_dropped) > 3 else ")") if self.keys_dropped else ""
        return (f"converted from `{self.source_file}` (sha256 `{self.source_sha256[:16]}...`, its "
                f"{'EMA weights' if self.use_ema else self.container}, {self.layout}) to `{self.model_class}` "
                f"as `{self.architecture}`; mean and std from {self.normalisation_from}{dropped}")
