"""benchmarks/gpu_checks.sh, the script a lent GPU runs, end to end on this CPU with tiny sizes
(--cpu): it installs the project from the working tree, runs every check under its limit and
prints one JSON line per check, so it cannot rot between the sessions that have a GPU."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_gpu_checks_run_end_to_end_on_a_cpu(tmp_path):
    out = tmp_path / "checks"
    done = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_checks.sh"), "--cpu", "--out", str(out)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]  # stdout: JSON lines only
    checks = {line["check"]: line for line in lines}
    assert list(checks) == ["install", "corruption_grid", "attention_capture", "timm_attention_maps", "teacher_memory",
                            "view_cost", "dad_vs_kd", "dad-deepspeed_zero3"]
    failed = {name: line.get("log_tail") for name, line in checks.items() if line["status"] != "ok"}
    assert not failed, failed
    assert checks["install"]["result"]["unmet"] == []
    assert all(view["syncs"] == 0 for view in checks["view_cost"]["result"])
    launched = checks["dad-deepspeed_zero3"]["result"]
    assert launched["checkpoint_mode"] == "deepspeed" and launched["resumed"] and launched["whole_student"] is True
    assert launched["card"]
