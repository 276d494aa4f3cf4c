"""The bundled model's recipe (models/imdb-perceiver/recipe.sh: the base, four runs from it, their soup;
refused without CUDA) runs its steps in order and, rerun after an interruption, resumes the unfinished
one and skips the finished ones. The trainers are replaced by stand-ins on PATH that log
their arguments; the real ones are tested elsewhere."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "models" / "imdb-perceiver"
RECIPE = RECIPES / "recipe.sh"

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


def run_recipe(tmp_path: Path, fail_at: str = "", cuda: bool = True) -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("pcv-train", FAKE_TRAIN), ("pcv-export", FAKE_EXPORT), ("pcv-soup", FAKE_SOUP)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    python3 = bin_dir / "python3"
    python3.write_text(FAKE_PYTHON)
    python3.chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LOG": str(log), "FAIL_AT": fail_at,
           "CUDA": "1" if cuda else "0"}
    proc = subprocess.run(["bash", str(RECIPE), str(tmp_path / "data"), str(tmp_path / "run")], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr)
    return proc.returncode, log.read_text().splitlines()


RUNS = ["train i 7", "train j 7", "train k 7", "train l 7"]
END = ["soup soup i j k l ", "export soup"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_recipe_trains_the_base_then_four_runs_from_it_then_their_soup(tmp_path):
    rc, calls = run_recipe(tmp_path)
    assert rc == 0 and calls[:2] == ["train base 8", "train teacher-run "]
    assert sorted(calls[2:6]) == RUNS and calls[6:] == END  # the four side by side, in any order
    for run in "ijkl":  # the runs continue the base just trained
        assert (tmp_path / "run" / run / "init_from").read_text() == str(tmp_path / "run" / "base")
    rc, calls = run_recipe(tmp_path)  # all trained: nothing retrained (the stand-in writes no teacher cache)
    assert (rc, calls) == (0, ["train teacher-run "] + END)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_recipe_resumes_an_interrupted_base(tmp_path):
    rc, calls = run_recipe(tmp_path, fail_at="8")
    assert rc != 0 and calls == ["train base 8"]
    rc, calls = run_recipe(tmp_path)
    assert rc == 0 and calls[0] == "train base 8" and calls[-2:] == END


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_recipe_stops_before_the_soup_when_a_run_fails_and_resumes(tmp_path, capsys):
    rc, calls = run_recipe(tmp_path, fail_at="7")  # the four runs interrupted
    assert rc == 1 and sorted(calls[2:]) == RUNS  # no soup of unfinished runs
    assert "rerun this command" in capsys.readouterr().out
    rc, calls = run_recipe(tmp_path)
    assert rc == 0 and sorted(calls[1:5]) == RUNS and calls[5:] == END


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_recipe_without_cuda_says_so_and_trains_nothing(tmp_path, capsys):
    rc, calls = run_recipe(tmp_path, cuda=False)
    assert rc == 2 and calls == []
    assert "CUDA GPU" in capsys.readouterr().out
