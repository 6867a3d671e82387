"""What every recipe checks before its first step, from its flags and the data: the push request,
the launch, checkpointing, and whether a card can be written."""

from __future__ import annotations

import logging
import os

from accelerate import PartialState
from datasets import IterableDataset
from transformers import set_seed

from ..data.images import BadImage, list_of, too_many_message
from ..data.streams import check_shards
from ..evaluation.corrupted_sets import CorruptedSetCache, decode_evaluation_set
from ..hub.push import check_repo_id
from ..training.checks import check_checkpointing, check_output_dir, check_trains_something
from ..training.distributed import check_one_device_per_process
from ..training.divergence import last_checkpoint
from ..utils.problems import Problems
from ..views.distortions import check_distortions
from .arguments import RobustnessArguments
from .recipe_data import RecipeData

logger = logging.getLogger(__name__)


def decode_evaluation_split(data: RecipeData, resizer, robustness: RobustnessArguments, max_fraction: float,
                            problems: Problems) -> list[BadImage]:
    """Decodes the evaluation split once, before training, into the corruption cache the
    robustness report reads; lists its bad images, and a problem when they pass ``max_fraction``.
    The one check that takes time, so it runs last and only when nothing else is wrong."""
    if problems or data.label_column is None:
        return []
    with PartialState().main_process_first():
        decoded = problems.check("--eval_split", decode_evaluation_set, data.evaluation, resizer,
                                 CorruptedSetCache(robustness.corruption_cache_dir), data.image_column,
                                 data.label_column, robustness.robustness_batch_size,
                                 robustness.robustness_num_workers)
    if decoded is None:
        return []
    _, bad = decoded
    if len(bad) > max_fraction * len(data.evaluation):
        problems.add("--eval_split", too_many_message(bad, len(data.evaluation), max_fraction, "evaluation split"))
    elif bad:
        logger.warning("%d image(s) of the evaluation split do not decode and are left out of every accuracy: %s",
                       len(bad), list_of(bad))
    return bad


def check_recipe_flags(problems: Problems, script_args, robustness: RobustnessArguments | None, config,
                       script: str = "recipes/multilevel.py") -> str | None:
    """What every training recipe checks first, from its flags alone (and the seed it sets before
    any model is made, so new heads and the demo zoo start from it). Returns the Hub repo to push
    to after training, or ``None``."""
    if config is not None:
        set_seed(config.seed)
        problems.check("--output_dir", check_output_dir, config.output_dir)
        problems.check("--num_train_epochs / --max_steps", check_trains_something, config)
    repo_id = take_push_request(config, problems)
    check_training_flags(config, problems, script)
    if script_args is not None:
        problems.check("--eval_distortions", check_distortions, script_args.eval_distortions)
    if robustness is not None:
        robustness.check(problems)
    return repo_id


def raise_before_the_demo_zoo(problems: Problems, parsed: tuple, teacher: str | None) -> None:
    """Problems so far end the run before the embedded demo's models are built (training them takes
    minutes), and when a set of flags did not parse (the rest of the checks need them)."""
    if None in parsed or (not teacher and problems):
        problems.raise_if_any()


def check_training_flags(config, problems: Problems, script: str = "recipes/multilevel.py") -> None:
    """What ``TrainingArguments`` leave to the first step: a checkpoint to resume from that exists
    (``--resume_from_checkpoint true``: the newest in ``output_dir``), one GPU per process, a
    teacher sharded only across several processes, non-reentrant checkpointing with attention maps."""
    if config is None:
        return
    problems.check("--num_processes", check_one_device_per_process, config.n_gpu, script)
    if config.teacher_sharding and config.world_size < 2:
        problems.add("--teacher_sharding", "shards the teacher across processes, and this run has one: launch "
                                           f"several (accelerate launch --num_processes N {script} ...)")
    problems.check("--activation_checkpointing_kwargs", check_checkpointing, config)
    resume = config.resume_from_checkpoint
    if not resume:
        return
    if str(resume).lower() == "true":
        config.resume_from_checkpoint = last_checkpoint(config.output_dir)
        if config.resume_from_checkpoint is None:
            problems.add("--resume_from_checkpoint", f"there is no checkpoint-<step> folder in {config.output_dir} "
                                                     "to resume from")
    elif not os.path.isdir(resume):
        problems.add("--resume_from_checkpoint", f"no checkpoint folder {resume!r} (a run's checkpoints are "
                                                 f"{config.output_dir}/checkpoint-<step>)")


def take_push_request(config, problems: Problems) -> str | None:
    """The Hub repo the student goes to after training, or ``None``. Turns the Trainer's own push
    off, so that nothing contacts the Hub before training ends; a missing or malformed repo id is
    a problem now."""
    if config is None or not config.push_to_hub:
        return None
    config.push_to_hub = False
    if not config.hub_model_id:
        problems.add("--push_to_hub", "needs --hub_model_id <namespace>/<name>")
        return None
    problems.check("--hub_model_id", check_repo_id, config.hub_model_id)
    return config.hub_model_id


def check_card_possible(data: RecipeData | None, student_scored: bool, repo_id: str | None,
                        problems: Problems) -> None:
    """A push needs a card, and a card needs accuracy: labels, two classes, a student head for them."""
    if repo_id is None or data is None:
        return
    if not data.scored:
        problems.add("--push_to_hub", "the dataset has fewer than two labelled classes to measure the student on, so "
                                      "there is no model card to push; use labelled data or drop --push_to_hub")
    elif not student_scored:
        problems.add("--push_to_hub", "the student has no classification head for the dataset's classes, so there is "
                                      "no model card to push; drop --push_to_hub")


def check_streaming(problems: Problems, data, config, indexes_the_training_set: dict[str, bool]) -> None:
    """A streamed training split (``--streaming``): shards the processes share evenly, ``--max_steps``
    in place of epochs, and nothing that indexes the split (each flag of ``indexes_the_training_set``
    that is on is refused, named). The trainer has accelerate give each process its shards."""
    if data is None or not isinstance(data.train, IterableDataset):
        return
    problems.check("--streaming", check_shards, data.train, config.world_size)
    if config.max_steps <= 0:
        problems.add("--max_steps", "a stream has no length, so epochs cannot be counted: give --max_steps (the "
                                    "optimizer steps to train)")
    for flag, on in indexes_the_training_set.items():
        if on:
            problems.add(flag, "reads the training split by row index, which a stream has not: drop it with "
                               "--streaming, or drop --streaming")
