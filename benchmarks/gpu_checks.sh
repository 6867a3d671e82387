#!/usr/bin/env bash
# The GPU checks, in one short run on a bare machine with one CUDA GPU (an H200 or H100, its own
# python3 and CUDA torch, no network):
#   1. install: the project from this working tree, into $OUT/site, its dependencies from --wheels
#      (the stack pyproject.toml asks for, carried along: no index); every requirement checked;
#   2. corruption_grid: the 19 x 5 ImageNet-C grid on the GPU against ViT-B/16 bf16 inference;
#   3. attention_capture, 4. teacher_memory: selective attention and the teacher's dtype at batch 64 bf16
#      (3b. timm_attention_maps: a timm student's maps read beside its fused kernel);
#   5. view_cost: each training view's syncs and time against a ViT-B/16 step;
#   6. dad_vs_kd: a DAD step against a KD step, and offline generation;
#   7-10. {multilevel,dad} x {fsdp,deepspeed_zero3}: one-GPU launches of each recipe with the shipped
#      YAML: train 2 steps and checkpoint, resume to 4, the whole student folder (benchmarks/launch_check.py);
#      with --cpu (tiny sizes, one lever of teacher_memory), DAD under deepspeed_zero3.yaml alone.
# Each check runs under its own time limit, within an overall budget (8 minutes on the GPU), and the
# run goes on after a failure. Stdout gets one JSON line per check; logs go to $OUT.
#
#   benchmarks/gpu_checks.sh --wheels .whl                  # on the GPU machine
#   benchmarks/gpu_checks.sh --cpu                          # end to end on a CPU, tiny sizes (the suite runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CPU=0
WHEELS=""
OUT=${OUT:-gpu_checks}
BUDGET=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) CPU=1 ;;
        --wheels) WHEELS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --budget) BUDGET=$2; shift ;;
        *) echo "unknown argument $1 (use --cpu, --wheels DIR, --out DIR, --budget SECONDS)" >&2; exit 2 ;;
    esac
    shift
done
PY=${PYTHON:-python3}
case "$PY" in /*) ;; */*) PY="$ROOT/$PY" ;; esac  # the checks run from other folders
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SITE="$OUT/site"
[ -n "$BUDGET" ] || BUDGET=$([ "$CPU" = 1 ] && echo 900 || echo 480)
DEADLINE=$(( $(date +%s) + BUDGET ))
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    TRANSFORMERS_VERBOSITY=error PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# run NAME LIMIT COMMAND...: the command under min(LIMIT, the budget left); then its JSON line.
run() {
    local name=$1 limit=$2; shift 2
    local left=$(( DEADLINE - $(date +%s) )) log="$OUT/$name.log" start rc
    [ "$left" -lt "$limit" ] && limit=$left
    start=$(date +%s.%N)
    if [ "$limit" -le 0 ]; then
        echo "not run: the budget of ${BUDGET}s was spent" > "$log"
        rc=125
    else
        timeout --kill-after=10 "$limit" bash -c '"$@"' bash "$@" > "$log" 2>&1  # its process group, children too
        rc=$?
    fi
    "$PY" - "$name" "$rc" "$start" "$limit" "$log" <<'EOF'
import json, sys, time
name, rc, start, limit, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
results = []
for line in open(log, errors="replace"):
    line = line.strip()
    if line.startswith("{"):
        try:
            results.append(json.loads(line))
        except ValueError:
            pass
status = {0: "ok", 124: "timeout", 137: "timeout", 125: "not run"}.get(rc, "failed")
tail = [] if rc == 0 else open(log, errors="replace").read().splitlines()[-6:]
print(json.dumps({"check": name, "status": status, "exit_code": rc, "seconds": round(time.time() - start, 1),
                  "limit_s": limit, "result": results[0] if len(results) == 1 else results or None,
                  "log": log, **({"log_tail": tail} if tail else {})}), flush=True)
EOF
}

install() {
    rm -rf "$SITE"
    if [ -n "$WHEELS" ]; then
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || return 1
    fi
    "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" "$ROOT" \
        || return 1
    "$PY" - "$ROOT/pyproject.toml" <<'EOF'
import json, re, sys
from importlib import metadata
import hf_robust_distill
text = open(sys.argv[1]).read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
wanted = re.findall(r'^\s*"([^"]+)"', block, re.M) + ["deepspeed"]
from packaging.requirements import Requirement
found, missing = {}, []
for spec in wanted:
    requirement = Requirement(spec)
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        missing.append(spec)
        continue
    found[requirement.name] = version
    if version not in requirement.specifier:
        missing.append(f"{spec} (found {version})")
print(json.dumps({"package": hf_robust_distill.__file__, "versions": found, "unmet": missing}))
sys.exit(1 if missing else 0)
EOF
}

# two launches of RECIPE under CONFIG (train to a checkpoint, then resume), and what they left
launches() {
    local recipe=$1 config=$2 out="$OUT/$1-$2" precision=()
    [ "$CPU" = 1 ] && precision=(--mixed_precision no)  # bf16 needs a GPU (or --use_cpu, which turns DeepSpeed off)
    local models="$OUT/models" flags=()
    if [ "$recipe" = multilevel ]; then
        flags=(--teacher_name_or_path "$models/vit")
    else
        flags=(--teacher_name_or_path "$models/clip" --vq_name_or_path "$models/vq" --student_name_or_path "$models/vit"
               --prompt_templates short --generation_batch_size 16)
    fi
    local common=(--output_dir "$out" --per_device_train_batch_size 8 --max_train_samples 64 --max_eval_samples 16
                  --robustness_corruptions contrast --robustness_severities 1 --eval_distortions gaussian_noise:3
                  --save_strategy steps --save_steps 2 --report_to none --disable_tqdm true "${flags[@]}")
    "$PY" -m accelerate.commands.launch --config_file "recipes/configs/$config.yaml" --num_processes 1 \
        "${precision[@]}" "recipes/$recipe.py" "${common[@]}" --max_steps 2 --logging_steps 1 || return 1
    local written
    written=$("$PY" -c 'import os, sys; print(os.stat(sys.argv[1]).st_mtime_ns)' "$out/checkpoint-2/trainer_state.json") \
        || return 1
    "$PY" -m accelerate.commands.launch --config_file "recipes/configs/$config.yaml" --num_processes 1 \
        "${precision[@]}" "recipes/$recipe.py" "${common[@]}" --max_steps 4 --logging_steps 1 \
        --resume_from_checkpoint true || return 1
    "$PY" benchmarks/launch_check.py "$out" 2 4 "$written"
}

export ROOT CPU WHEELS OUT SITE PY
export -f install launches
run install 240 install
cd "$ROOT/benchmarks"
if [ "$CPU" = 1 ]; then
    run corruption_grid 120 "$PY" corruption_speed.py --images 4 --size 32 --no_reference --corruptions contrast,shot_noise
    run attention_capture 120 "$PY" attention_capture.py --batch_size 2 --image_size 32 --hidden_size 32 --layers 2 \
        --heads 2 --steps 2 --warmup 1 --repeats 1
    run timm_attention_maps 90 "$PY" timm_attention_maps.py --architecture vit_tiny_patch16_224 --image_size 32 \
        --batch_size 2 --steps 1
    run teacher_memory 150 "$PY" teacher_memory.py --batch_size 2 --image_size 32 --hidden_size 32 --layers 2 --heads 2 \
        --steps 2 --warmup 1 --repeats 1 --levers teacher_dtype
    run view_cost 120 "$PY" view_cost.py --repeats 1 --only "clean,pixel_mask:0.5-0.9,noise:0.1-0.5,blur:1-4;dad (online)"
    run dad_vs_kd 150 "$PY" dad_cost.py --steps 2 --warmup 1 --repeats 1 --generate 16 --batch_size 8
else
    run corruption_grid 90 "$PY" corruption_speed.py --device cuda --threads 16 --no_reference --images 8
    run attention_capture 60 "$PY" attention_capture.py --batch_size 64 --bf16 --steps 20 --warmup 3 --repeats 1
    run timm_attention_maps 40 "$PY" timm_attention_maps.py --batch_size 64 --bf16 --steps 10
    run teacher_memory 75 "$PY" teacher_memory.py --batch_size 64 --bf16 --steps 10 --warmup 2 --repeats 1
    run view_cost 45 "$PY" view_cost.py --hidden_size 768 --layers 12 --heads 12 --image_size 224 --patch_size 16 \
        --batch_size 64 --bf16 --repeats 5
    run dad_vs_kd 60 "$PY" dad_cost.py --hidden_size 768 --layers 12 --heads 12 --image_size 224 --patch_size 16 \
        --vq_channels 128 256 256 512 --vq_codes 16384 --batch_size 64 --steps 10 --repeats 1 --generate 256 --bf16
fi
cd "$ROOT"
"$PY" benchmarks/tiny_models.py "$OUT/models" > "$OUT/models.log" 2>&1
if [ "$CPU" = 1 ]; then  # one pair: accelerate keeps FSDP off on a CPU; DeepSpeed runs (and DAD generates offline)
    run dad-deepspeed_zero3 240 launches dad deepspeed_zero3
else
    for config in fsdp deepspeed_zero3; do
        for recipe in multilevel dad; do
            run "$recipe-$config" 45 launches "$recipe" "$config"
        done
    done
fi
