"""Runs recipes/multilevel.py under torchrun, then writes this rank's weight digest.

Used by test_ddp.py: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_recipe_run.py DIGEST_DIR <recipe flags>
"""

import hashlib
import importlib.util
import os
import sys

import torch

torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location(
    "multilevel", os.path.join(os.path.dirname(__file__), "..", "recipes", "multilevel.py"))
recipe = importlib.util.module_from_spec(spec)
sys.modules["multilevel"] = recipe  # dataclasses look their module up there
spec.loader.exec_module(recipe)

digest_dir, argv = sys.argv[1], sys.argv[2:]
trainer = recipe.main(argv)["trainer"]
digest = hashlib.sha256()
for name, tensor in sorted(trainer.model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
rank = trainer.args.process_index
with open(os.path.join(digest_dir, f"rank{rank}.txt"), "w") as f:
    f.write(f"{trainer.args.world_size} {trainer.state.global_step} {digest.hexdigest()}")
