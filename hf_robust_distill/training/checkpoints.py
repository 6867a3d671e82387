"""What a run keeps beside each checkpoint, under every launcher, and reads back on resume.

A checkpoint's model files are the launcher's (safetensors under DDP, a sharded
``pytorch_model_fsdp_0`` under FSDP, DeepSpeed's own under ZeRO); two parts of a run are not in
them in a form a resume can use: the learned projections to the teacher's width (a submodule kept
out of the student's saved weights) and the weight average. ``CheckpointCompanions`` writes them
beside the model files (``projections.safetensors``, ``ema.safetensors``) once the checkpoint
is saved (``on_save``: every process, every launcher; sharded projections are gathered), and reads
them back before a resumed run starts, whatever launcher saved it (transformers' FSDP and
DeepSpeed resume paths never call ``Trainer._load_from_checkpoint``).
"""

from __future__ import annotations

import logging
import os

from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..methods import projections as projection_files
from .ema import WeightAverage
from .launchers import whole_state_dict

logger = logging.getLogger(__name__)


def resume_folder(resume_from_checkpoint, output_dir: str) -> str | None:
    """The checkpoint a ``train(resume_from_checkpoint=...)`` call resumes from, as the Trainer
    resolves it (``True``: the newest in ``output_dir``), or ``None``."""
    if resume_from_checkpoint in (None, False):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":
        folder = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if folder is None:
            raise ValueError(f"no checkpoint-<step> folder in {output_dir} to resume from")
        return folder
    return str(resume_from_checkpoint)


class CheckpointCompanions(TrainerCallback):
    """The projections and the weight average of a run, saved beside each checkpoint."""

    def __init__(self, projections=None, average: WeightAverage | None = None):
        self.projections, self.average = projections, average

    def on_save(self, args, state, control, **kwargs):
        self.save(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"), args.should_save)

    def save(self, folder: str, is_main_process: bool) -> None:
        """Writes them into ``folder``; every process calls it (sharded projections are gathered)."""
        weights = whole_state_dict(self.projections) if self.projections is not None else None
        if not is_main_process:
            return
        if weights is not None:
            projection_files.save_state(weights, folder)
        if self.average is not None:
            self.average.save(folder)

    def load(self, folder: str) -> None:
        """Reads them back from ``folder`` before a resumed run starts."""
        if self.projections is not None:
            projection_files.load(self.projections, folder)
        if self.average is not None and not self.average.load(folder):
            logger.warning("%s holds no weight average (the run had no --ema_decay): it starts from the checkpoint's "
                           "weights", folder)
            self.average.restart = True  # once the launcher has loaded them


def reloads_through_from_pretrained(model, checkpoint: str, *, launcher_loads: bool) -> bool:
    """Whether a checkpoint is read back through ``from_pretrained`` (``load_from_pretrained``)
    rather than by the Trainer or the launcher (``launcher_loads``: FSDP, DeepSpeed)."""
    return (not launcher_loads and isinstance(model, PreTrainedModel)
            and os.path.isfile(os.path.join(checkpoint, "config.json")))


def load_from_pretrained(model: PreTrainedModel, checkpoint: str) -> None:
    """Reads checkpoint weights into ``model`` through ``from_pretrained``.

    transformers 5.x writes some models' weights under their legacy names (ViT's
    ``vit.encoder.layer.N...``) while ``Trainer`` reloads them with a non-strict
    ``load_state_dict`` that matches none of them, so a resumed run would silently restart from the
    initial weights. ``from_pretrained`` converts the names; loading is strict (the projections,
    kept beside the checkpoint, excepted).
    """
    reloaded = type(model).from_pretrained(checkpoint, config=model.config, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(reloaded.state_dict(), strict=False)
    if unexpected or any(not key.startswith(projection_files.ATTRIBUTE + ".") for key in missing):
        raise RuntimeError(f"{checkpoint} does not hold this student's weights: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}")
