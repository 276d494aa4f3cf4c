"""The bundled model's recipe (models/imdb-perceiver/recipe.sh) runs its stages in order and, rerun
after an interruption, resumes the unfinished one and skips the finished ones. The trainers are
replaced by stand-ins on PATH that log their arguments; the real ones are tested elsewhere."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "models" / "imdb-perceiver" / "recipe.sh"

# Logs its --out and --max-minutes; writes metrics.json as pcv-train does at the end of a run,
# unless $FAIL_AT names this budget (the run is "interrupted": a checkpoint, no metrics.json).
FAKE_TRAIN = """#!/usr/bin/env bash
out=""; mm=""
while [[ $# -gt 0 ]]; do case $1 in --out) out=$2; shift;; --max-minutes) mm=$2; shift;; esac; shift; done
echo "train $(basename "$out") $mm" >> "$LOG"
mkdir -p "$out/checkpoint"
[[ "$mm" == "${FAIL_AT:-}" ]] && exit 1
echo "{\\"config\\": {\\"max_minutes\\": $mm.0}}" > "$out/metrics.json"
"""
FAKE_EXPORT = """#!/usr/bin/env bash
echo "export $(basename "$1")" >> "$LOG"
"""


def run_recipe(tmp_path: Path, fail_at: str = "") -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("pcv-train", FAKE_TRAIN), ("pcv-export", FAKE_EXPORT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    python3 = bin_dir / "python3"  # the recipe reads metrics.json with python3: this interpreter
    if not python3.exists():
        python3.symlink_to(sys.executable)
    log = tmp_path / "log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LOG": str(log), "FAIL_AT": fail_at}
    proc = subprocess.run(["bash", str(RECIPE), str(tmp_path / "data"), str(tmp_path / "run")], env=env,
                          capture_output=True, text=True)
    return proc.returncode, log.read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_recipe_runs_stages_in_order_and_resumes(tmp_path):
    rc, calls = run_recipe(tmp_path)
    assert rc == 0
    assert calls == ["train stage1 215", "train stage2 145", "train stage2 265", "train stage3 95", "export stage3"]

    rc, calls = run_recipe(tmp_path)  # everything done: only the export runs again
    assert (rc, calls) == (0, ["export stage3"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("fail_at, done_before", [
    ("145", ["train stage1 215"]),
    ("265", ["train stage1 215", "train stage2 145"]),
    ("95", ["train stage1 215", "train stage2 145", "train stage2 265"]),
])
def test_recipe_rerun_after_interruption_resumes_the_unfinished_stage(tmp_path, fail_at, done_before):
    rc, calls = run_recipe(tmp_path, fail_at=fail_at)  # a stage-2 or stage-3 run interrupted
    stages = ["train stage2 145", "train stage2 265", "train stage3 95"]
    failed = next(c for c in stages if c.endswith(f" {fail_at}"))
    assert rc != 0 and calls == done_before + [failed]

    rc, calls = run_recipe(tmp_path)  # the rerun goes on from there
    assert (rc, calls) == (0, stages[stages.index(failed):] + ["export stage3"])
