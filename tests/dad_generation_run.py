"""One process of a distributed offline DAD generation, for test_dad.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/dad_generation_run.py CLIP VQ OUTPUT_DIR ROWS SHARD_SIZE
"""

import os
import sys

import torch

torch.set_num_threads(1)
from accelerate import PartialState  # noqa: E402

from hf_robust_distill import CLIPZeroShotClassifier, VQDiscretizer  # noqa: E402
from hf_robust_distill.dad import DADGenerator  # noqa: E402
from hf_robust_distill.data import demo_digits  # noqa: E402

clip_path, vq_path, output_dir, rows, shard_size = sys.argv[1:6]
state = PartialState(cpu=True)
teacher = CLIPZeroShotClassifier.from_clip(clip_path, [str(i) for i in range(10)], templates="short")
discretizer = VQDiscretizer.from_pretrained(vq_path)
dataset = demo_digits()["train"].select(range(int(rows)))
generator = DADGenerator(teacher, discretizer, dataset, output_dir, image_size=(32, 32), batch_size=3,
                         shard_size=int(shard_size), state=state, progress=False)
generator.run()
with open(os.path.join(output_dir, f"written-by-rank{state.process_index}.txt"), "w") as f:
    f.write(" ".join(str(shard) for shard in generator.written))
