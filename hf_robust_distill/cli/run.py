"""A recipe's ``__main__``: problems found before training end the process with their list (exit
status 2), and a run that stops on an error leaves no empty output folder behind."""

from __future__ import annotations

import os
import sys

from accelerate import PartialState

from ..utils.problems import PreflightError

_WATCHED: list[tuple[str, bool]] = []


def watch_output_dir(path: str) -> None:
    """The folder a run writes into: if the run then stops on an error, the folder is removed when
    this run made it and left nothing in it (a diverged or bad-image run leaves no empty folder)."""
    _WATCHED.append((path, os.path.exists(path)))


def _remove_if_empty(path: str) -> None:
    for folder, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):  # the deepest first
        try:
            os.rmdir(folder)  # only an empty folder goes
        except OSError:
            pass


def _rank() -> int:
    """This process's rank in its launch, from the launcher's environment (torchrun, DeepSpeed, MPI)."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return PartialState().process_index


def run_recipe(main) -> None:
    """A recipe's ``__main__``: its problems found before training end the process with their list
    (exit status 2, on the main process only, like a flag argparse rejects), not a traceback; a run
    that stops on an error leaves no empty output folder behind."""
    try:
        main()
    except PreflightError as error:
        if _rank() == 0:  # once per launch; PartialState may not know its rank when the checks failed
            print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        for path, existed in _WATCHED:
            if not existed and os.path.isdir(path):
                _remove_if_empty(path)
        raise
