#!/usr/bin/env bash
# The GPU checks, in one run (for a machine with one CUDA GPU and a CUDA build of torch): the
# corruption grid's throughput against ViT-B/16 bf16 inference (and the CPU table beside the
# reference), selective attention and teacher precision at batch 64 in bf16, and the recipes
# under accelerate's FSDP2 and DeepSpeed ZeRO-3 on that one GPU (a sharded student, its sharded
# checkpoint, a resume, and the whole student folder). JSON and logs go to ${OUT:-gpu_checks}.
set -euo pipefail
OUT=${OUT:-gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-python}

$PY benchmarks/corruption_speed.py --device cuda --threads 16 > "$OUT/corruption_speed.json"
$PY benchmarks/attention_capture.py --batch_size 64 --bf16 --steps 20 --warmup 3 --repeats 2 > "$OUT/attention_capture.json"
$PY benchmarks/attention_capture.py --batch_size 64 --bf16 --steps 20 --warmup 3 --repeats 2 --rows cls \
    > "$OUT/attention_capture_cls.json"
$PY benchmarks/teacher_memory.py --batch_size 64 --bf16 --steps 10 --warmup 2 --repeats 1 > "$OUT/teacher_memory.json"

one_gpu() {  # recipe, config, output folder, extra flags
    accelerate launch --config_file "$2" --num_processes 1 "$1" --output_dir "$3" --max_steps 6 \
        --save_strategy steps --save_steps 3 --logging_steps 1 --report_to none --disable_tqdm true "${@:4}"
}
for config in fsdp deepspeed_zero3; do
    one_gpu recipes/multilevel.py "recipes/configs/$config.yaml" "$OUT/multilevel-$config" --max_steps 3 \
        > "$OUT/multilevel-$config.log" 2>&1
    one_gpu recipes/multilevel.py "recipes/configs/$config.yaml" "$OUT/multilevel-$config" \
        --resume_from_checkpoint true >> "$OUT/multilevel-$config.log" 2>&1
    $PY -c "from transformers import AutoModelForImageClassification as M; M.from_pretrained('$OUT/multilevel-$config'); print('whole student: $config')"
    one_gpu recipes/dad.py "recipes/configs/$config.yaml" "$OUT/dad-$config" > "$OUT/dad-$config.log" 2>&1
done
ls "$OUT"
