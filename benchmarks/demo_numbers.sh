#!/usr/bin/env bash
# The numbers `make demo` prints (accuracies, mCE), at two commits, side by side; exit 1 when they differ.
#
#   benchmarks/demo_numbers.sh BASE [HEAD]     # HEAD defaults to the working tree
#
# Each commit runs the demo in a fresh folder (its own demo zoo and corrupted sets), with this
# checkout's .venv and the commit's package first on PYTHONPATH; the lines compared are the tables' rows
# and every line that carries a percentage or an mCE.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
base="${1:?usage: benchmarks/demo_numbers.sh BASE [HEAD]}"
head="${2:-}"
work="$(mktemp -d)"
trap 'git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true; git -C "$root" worktree remove --force "$work/head" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

numbers() {  # tree, name
    mkdir -p "$work/run-$2"
    (cd "$work/run-$2" && HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
        PYTHONPATH="$1" "$python" "$1/recipes/demo.py" > "$work/$2.log" 2>&1) || { tail -30 "$work/$2.log"; exit 2; }
    tr '\r' '\n' < "$work/$2.log" | grep -E '^\| |[0-9]%|mCE' | grep -vE '^\s*/|/s\]|s/it' > "$work/$2.numbers"
}

git -C "$root" worktree add --detach "$work/base" "$base" >/dev/null 2>&1
if [ -n "$head" ]; then
    git -C "$root" worktree add --detach "$work/head" "$head" >/dev/null 2>&1
    head_tree="$work/head"
else
    head_tree="$root"
fi
numbers "$work/base" base
numbers "$head_tree" head
if diff "$work/base.numbers" "$work/head.numbers"; then
    echo "identical: $(wc -l < "$work/head.numbers") lines of numbers"
    cat "$work/head.numbers"
else
    echo "the demo's numbers differ (< $base, > ${head:-working tree})"
    exit 1
fi
