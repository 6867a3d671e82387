"""What two launches of a recipe left in their output folder: which launcher's checkpoint the first
wrote (FSDP's sharded ``pytorch_model_fsdp_0``, DeepSpeed's ``global_step*``, or plain
safetensors), whether the second resumed from it, and whether the final folder is a whole student
that plain ``from_pretrained`` loads.

A restart from scratch would save the first checkpoint again, so the second launch resumed when it
left that checkpoint as the first launch wrote it (its ``trainer_state.json`` modification time,
recorded in between) and went on to the final step.

    python benchmarks/launch_check.py OUTPUT_DIR CHECKPOINT_STEP FINAL_STEP CHECKPOINT_MTIME_NS

Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import sys


def main(output_dir: str, checkpoint_step: int, final_step: int, checkpoint_mtime_ns: int) -> dict:
    import torch
    from transformers import AutoModelForImageClassification

    checkpoint = os.path.join(output_dir, f"checkpoint-{checkpoint_step}")
    files = sorted(os.listdir(checkpoint)) if os.path.isdir(checkpoint) else []
    mode = ("fsdp" if "pytorch_model_fsdp_0" in files else
            "deepspeed" if any(f.startswith("global_step") for f in files) else "plain" if files else None)
    final = os.path.join(output_dir, f"checkpoint-{final_step}", "trainer_state.json")
    steps = []
    if os.path.isfile(final):
        with open(final) as f:
            steps = [entry["step"] for entry in json.load(f)["log_history"] if "loss" in entry]
    try:
        student = AutoModelForImageClassification.from_pretrained(output_dir)
        whole = all(p.numel() > 0 and bool(torch.isfinite(p).all()) for p in student.parameters())
    except (OSError, ValueError, RuntimeError) as error:
        whole = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    state = os.path.join(checkpoint, "trainer_state.json")
    untouched = os.path.isfile(state) and os.stat(state).st_mtime_ns == checkpoint_mtime_ns
    resumed = untouched and final_step in steps
    return {"checkpoint_mode": mode, "checkpoint_files": files, "logged_steps": steps, "resumed": resumed,
            "whole_student": whole,
            "card": os.path.isfile(os.path.join(output_dir, "README.md"))}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
