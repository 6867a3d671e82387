"""Memory and speed of two levers beside selective attention, on the step of
``attention_capture.py`` (ViT-B/16 student and teacher, 224 px): the frozen teacher in bf16
against fp32 (``--teacher_dtype``), and gradient checkpointing of the student against none.

    python benchmarks/teacher_memory.py                         # CPU: batch 8
    python benchmarks/teacher_memory.py --batch_size 64 --bf16 --steps 20   # a GPU

Prints one JSON object per lever: the teacher's weight bytes, the bytes kept for backward, on a
GPU the step's peak memory, and images/s, with the ratios of each lever's variants.
"""

from __future__ import annotations

import json
import sys

import attention_capture as bench


def main():
    parser = bench.parser_of(__doc__.splitlines()[0])
    parser.add_argument("--levers", default="teacher_dtype,checkpointing", help="Comma-separated levers to measure.")
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(bench.one_run(opts)))
        return
    levers = opts.levers.split(",")
    if "teacher_dtype" in levers:
        dtypes = bench.run_variants({"bf16_teacher": ["--teacher_dtype", "bfloat16"],
                                     "fp32_teacher": ["--teacher_dtype", "float32"]}, opts.repeats, __file__)
        teacher_mib = {name: round(runs[0]["teacher_bytes"] / 2**20, 1) for name, runs in dtypes.items()}
        print(json.dumps({"lever": "teacher_dtype", "batch_size": opts.batch_size,
                          "device": dtypes["fp32_teacher"][0]["device"], "teacher_weights_mib": teacher_mib,
                          **bench.compare(dtypes, "bf16_teacher", "fp32_teacher")}))
    if "checkpointing" not in levers:
        return
    checkpointing = bench.run_variants({"checkpointing": ["--checkpointing"], "plain": []}, opts.repeats, __file__)
    print(json.dumps({"lever": "gradient_checkpointing", "batch_size": opts.batch_size,
                      "device": checkpointing["plain"][0]["device"],
                      **bench.compare(checkpointing, "checkpointing", "plain")}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
