"""`accelerate launch --config_file <a shipped YAML>` on CPU processes, for tests.

``launcher_environment`` asks accelerate's own launcher code (``launch_command_parser``,
``_validate_launch_command``, ``prepare_multi_gpu_env`` / ``prepare_deepspeed_cmd_env``) for the
environment it gives each process of a launch, so a test sees exactly what a user's launch sets:
``ACCELERATE_MIXED_PRECISION``, ``ACCELERATE_USE_FSDP`` and the ``FSDP_*`` settings, or the
``ACCELERATE_DEEPSPEED_*`` ones.

``run_launched`` forks processes with that environment (as torchrun would give it) and runs a
function in each. accelerate grants FSDP and DeepSpeed to GPU processes only
(``accelerate/state.py``): on a CPU it silently falls back to plain multi-CPU, so a test would pass
without the mode ever being on. Each process therefore stands in for a GPU process in one respect:
accelerate's backend choice answers "a GPU, on gloo" (``stand_in_for_a_gpu``). Everything else is
the run's and the launcher's own code, unchanged: ``TrainingArguments`` building the state from
the environment, the Trainer's accelerator, FSDP2's ``fsdp2_prepare_model``, transformers'
DeepSpeed config processing and finalisation, ``deepspeed.initialize``, batches cast by
``Trainer._prepare_input``. Tests then assert that the mode was really on (DTensor or ZeRO-3
partitioned parameters, a ``DeepSpeedEngine``).
"""

from __future__ import annotations

import os
import socket
import traceback
from functools import partial

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "recipes", "configs")


def config_file(name: str) -> str:
    return os.path.join(CONFIGS, f"{name}.yaml")


def launcher_environment(config: str, num_processes: int) -> dict[str, str]:
    """What ``accelerate launch --config_file <config> --num_processes N`` adds to each process's
    environment, computed by accelerate's launcher (the rendezvous variables left out)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", config_file(config) if not os.path.isfile(config) else config,
         "--num_processes", str(num_processes), "--main_process_port", "0", "script.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        # as accelerate.commands.launch.launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) if defaults else []
        if mixed_precision_from_config:
            fields.append("mixed_precision")
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    rendezvous = ("MASTER_ADDR", "MASTER_PORT", "PYTHONPATH", "OMP_NUM_THREADS")
    return {k: v for k, v in env.items() if os.environ.get(k) != v and k not in rendezvous}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_for_the_gpu(self, cpu: bool = False, sagemaker_dp=False, backend: str | None = None):
    """``PartialState._prepare_backend`` of a launched process, on gloo: a GPU's distributed type
    where the launch needs one (FSDP), multi-CPU elsewhere (DDP, which accelerate runs on CPUs as
    they are; DeepSpeed, whose state takes over from either)."""
    from accelerate.state import DistributedType

    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return "gloo", DistributedType.MULTI_GPU if fsdp else DistributedType.MULTI_CPU


def stand_in_for_a_gpu() -> None:
    """This CPU process plays a launched GPU process: accelerate sees a GPU launch (its process group
    on gloo, its device this CPU) and so grants FSDP and DeepSpeed; transformers sees a GPU that
    computes in bf16 (as this CPU does). Every state is then made by the run's own code, as in a
    real launch: each ``TrainingArguments`` resets and rebuilds it from the launcher's environment."""
    import transformers.training_args
    from accelerate.state import AcceleratorState, GradientState, PartialState

    PartialState._prepare_backend = _gloo_for_the_gpu
    transformers.training_args.is_torch_bf16_gpu_available = lambda: True
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _launched_process(index: int, function, environment: dict[str, str], world: int, port: int, record: str,
                      *args) -> None:
    os.environ.update(environment)
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                      ACCELERATE_TORCH_DEVICE="cpu", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)  # a fork keeps the parent's OpenMP pool without its threads
    try:
        stand_in_for_a_gpu()
        function(*args)
    except BaseException:
        with open(f"{record}.rank{index}", "w") as f:
            f.write(traceback.format_exc())
        raise


def run_launched(config: str, function, *args, num_processes: int = 2, timeout: float = 600) -> None:
    """``function(*args)`` in ``num_processes`` forked CPU processes launched as ``config`` (a
    shipped YAML's name or a path) launches them. A failure in any is raised here with its
    traceback; processes still running after ``timeout`` seconds (a hang: collectives that never
    meet) are ended and reported as such."""
    import tempfile
    import time

    from torch.multiprocessing import start_processes

    environment = launcher_environment(config, num_processes)
    with tempfile.TemporaryDirectory() as folder:
        record = os.path.join(folder, "failure")
        context = start_processes(partial(_launched_process), args=(function, environment, num_processes, free_port(),
                                                                    record, *args),
                                  nprocs=num_processes, start_method="fork", join=False)
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(1.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    for process in context.processes:
                        process.kill()
                    raise AssertionError(f"the launched processes did not finish in {timeout:.0f} s (a hang)")
        except Exception as error:
            if isinstance(error, AssertionError) and "did not finish" in str(error):
                raise
            failures = [open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))]
            raise AssertionError("\n".join(failures) or str(error)) from None
