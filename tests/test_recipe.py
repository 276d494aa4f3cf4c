"""The bundled model's recipes: recipe.sh (one GPU run, refused without CUDA), recipe-soup.sh (four CPU
continuations of its model, then their soup) and recipe-cpu.sh (the previous model's three CPU stages) run
their steps in order and, rerun after an interruption, resume
the unfinished one and skip the finished ones. The trainers are replaced by stand-ins on PATH that log
their arguments; the real ones are tested elsewhere."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "models" / "imdb-perceiver"
RECIPE = RECIPES / "recipe-cpu.sh"

# Logs its --out and --max-minutes, keeps its --init-from in OUT/init_from; writes metrics.json as pcv-train does at the end of a run,
# unless $FAIL_AT names this budget (the run is "interrupted": a checkpoint, no metrics.json).
FAKE_TRAIN = """#!/usr/bin/env bash
out=""; mm=""; init=""
while [[ $# -gt 0 ]]; do case $1 in --out) out=$2; shift;; --max-minutes) mm=$2; shift;; --init-from) init=$2; shift;; esac; shift; done
echo "train $(basename "$out") $mm" >> "$LOG"
mkdir -p "$out/checkpoint"
echo -n "$init" > "$out/init_from"
[[ -n "${FAIL_AT:-}" && "$mm" == "$FAIL_AT" ]] && exit 1
echo "{\\"config\\": {\\"max_minutes\\": $mm.0}}" > "$out/metrics.json"
"""
FAKE_EXPORT = """#!/usr/bin/env bash
echo "export $(basename "$1")" >> "$LOG"
"""
FAKE_SOUP = """#!/usr/bin/env bash
out=$1; shift
echo "soup $(basename "$out") $(for m in "$@"; do basename "$m"; done | tr '\\n' ' ')" >> "$LOG"
"""


# recipe.sh asks python3 whether torch sees a GPU: this stand-in answers from $CUDA.
FAKE_PYTHON = """#!/usr/bin/env bash
[[ "${CUDA:-1}" == 1 ]]
"""


def run_recipe(tmp_path: Path, fail_at: str = "", recipe: Path = RECIPE, cuda: bool = True,
               args: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("pcv-train", FAKE_TRAIN), ("pcv-export", FAKE_EXPORT), ("pcv-soup", FAKE_SOUP)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    python3 = bin_dir / "python3"
    if recipe == RECIPE and not python3.exists():  # recipe-cpu.sh reads metrics.json with python3: this interpreter
        python3.symlink_to(sys.executable)
    elif recipe != RECIPE:
        python3.write_text(FAKE_PYTHON)
        python3.chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LOG": str(log), "FAIL_AT": fail_at,
           "CUDA": "1" if cuda else "0"}
    proc = subprocess.run(["bash", str(recipe), str(tmp_path / "data"), str(tmp_path / "run"), *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr)
    return proc.returncode, log.read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_recipe_trains_once_resumes_and_exports(tmp_path):
    gpu = RECIPES / "recipe.sh"
    rc, calls = run_recipe(tmp_path, fail_at="8", recipe=gpu)  # the run is interrupted
    assert rc != 0 and calls == ["train run 8"]
    rc, calls = run_recipe(tmp_path, recipe=gpu)  # the rerun goes on with the same command, then exports
    assert (rc, calls) == (0, ["train run 8", "export run"])
    rc, calls = run_recipe(tmp_path, recipe=gpu)  # finished: only the export runs again
    assert (rc, calls) == (0, ["export run"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_recipe_without_cuda_says_so_and_trains_nothing(tmp_path, capsys):
    rc, calls = run_recipe(tmp_path, recipe=RECIPES / "recipe.sh", cuda=False)
    assert rc == 2 and calls == []
    assert "recipe-cpu.sh" in capsys.readouterr().out


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


SOUP_RUNS = ["train shift 95", "train splice 85", "train splice-nb 85", "train splice-nb-shift 75"]
SOUP_END = ["soup soup shift splice splice-nb splice-nb-shift ", "export soup"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_soup_recipe_trains_four_continuations_then_soups_them(tmp_path):
    soup = RECIPES / "recipe-soup.sh"
    rc, calls = run_recipe(tmp_path, recipe=soup)
    assert (rc, calls) == (0, SOUP_RUNS + SOUP_END)
    rc, calls = run_recipe(tmp_path, recipe=soup)  # everything trained: only the soup and its export again
    assert (rc, calls) == (0, SOUP_END)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_soup_recipe_rerun_after_interruption_resumes_the_unfinished_run(tmp_path):
    soup = RECIPES / "recipe-soup.sh"
    rc, calls = run_recipe(tmp_path, fail_at="85", recipe=soup)  # the second run is interrupted
    assert rc != 0 and calls == SOUP_RUNS[:2]
    rc, calls = run_recipe(tmp_path, recipe=soup)
    assert (rc, calls) == (0, SOUP_RUNS[1:] + SOUP_END)


GPU_SOUP = RECIPES / "recipe-soup-gpu.sh"
GPU_SOUP_RUNS = ["train i 7", "train j 7", "train k 7", "train l 7"]
GPU_SOUP_END = ["soup soup i j k l ", "export soup"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_soup_recipe_fits_the_teacher_then_trains_four_side_by_side_then_soups(tmp_path):
    rc, calls = run_recipe(tmp_path, recipe=GPU_SOUP)
    assert rc == 0
    # the teacher first (the stand-in writes no cache, so a rerun fits it again), the runs in any order
    assert calls[0] == "train teacher-run " and sorted(calls[1:5]) == GPU_SOUP_RUNS and calls[5:] == GPU_SOUP_END
    assert (tmp_path / "run" / "i" / "init_from").read_text() == str(RECIPES / "training" / "base")
    rc, calls = run_recipe(tmp_path, recipe=GPU_SOUP)  # everything trained: the soup and its export again
    assert (rc, calls) == (0, ["train teacher-run "] + GPU_SOUP_END)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_soup_recipe_stops_before_the_soup_when_a_run_fails_and_resumes(tmp_path, capsys):
    rc, calls = run_recipe(tmp_path, fail_at="7", recipe=GPU_SOUP)  # the four runs interrupted
    assert rc == 1 and sorted(calls[1:]) == GPU_SOUP_RUNS  # no soup of unfinished runs
    assert "rerun this command" in capsys.readouterr().out
    rc, calls = run_recipe(tmp_path, recipe=GPU_SOUP)
    assert rc == 0 and sorted(calls[1:5]) == GPU_SOUP_RUNS and calls[5:] == GPU_SOUP_END


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_soup_recipe_without_cuda_says_so_and_trains_nothing(tmp_path, capsys):
    rc, calls = run_recipe(tmp_path, recipe=GPU_SOUP, cuda=False)
    assert rc == 2 and calls == []
    assert "recipe-soup.sh" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_soup_recipe_from_scratch_trains_the_base_first_and_continues_from_it(tmp_path):
    rc, calls = run_recipe(tmp_path, recipe=GPU_SOUP, args=("scratch",))
    assert rc == 0 and calls[:3] == ["train base 8", "export base", "train teacher-run "]
    assert sorted(calls[3:7]) == GPU_SOUP_RUNS and calls[7:] == GPU_SOUP_END
    for run in "ijkl":  # the runs continue the base just trained, not the bundled one
        assert (tmp_path / "run" / run / "init_from").read_text() == str(tmp_path / "run" / "base")
    rc, calls = run_recipe(tmp_path, recipe=GPU_SOUP, args=("scratch",))  # all trained: nothing retrained
    assert (rc, calls) == (0, ["export base", "train teacher-run "] + GPU_SOUP_END)
