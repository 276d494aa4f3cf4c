"""pcv-train --average-last N: the last N checkpoints' weights are kept (safetensors), their mean is
scored at the end and saved as the model only if it validates better; the run itself goes on from
its last step. And a resumed run whose time budget is spent takes no further step."""

from __future__ import annotations

import json

import pcv.train.train as train_mod
import pytest
import torch
from pcv.train.cli import train_main
from pcv.train.loop import Checkpoint, average_weights
from safetensors.torch import load_file, save_file
from test_train import TINY


@pytest.fixture()
def labelled(tmp_path, reviews):
    """48 reviews, labels alternating (the dense teacher needs both in the training part)."""
    by_label = [[r for r in reviews if r["label"] == y][:24] for y in (0, 1)]
    rows = [{"text": r["text"], "label": r["label"]} for pair in zip(*by_label) for r in pair]
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def test_checkpoint_keeps_the_weights_of_its_last_n_saves(tmp_path):
    inner = torch.nn.Linear(3, 2)
    outer = torch.nn.ModuleDict({"model": inner, "head": torch.nn.Linear(2, 1)})
    ckpt = Checkpoint(tmp_path / "ck", outer, torch.optim.AdamW(outer.parameters()), keep=2, kept=inner)
    seen = {}
    for step in (3, 6, 9):
        with torch.no_grad():
            inner.weight.fill_(step)
        ckpt.save({"step": step})
        seen[step] = inner.weight.clone()
    assert [p.name for p in ckpt.recent()] == ["step-00000006.safetensors", "step-00000009.safetensors"]
    for p, step in zip(ckpt.recent(), (6, 9)):
        w = load_file(p)
        assert set(w) == {"weight", "bias"} and torch.equal(w["weight"], seen[step])  # the inner model only


def test_checkpoint_keeps_nothing_by_default(tmp_path):
    m = torch.nn.Linear(3, 2)
    Checkpoint(tmp_path / "ck", m, torch.optim.AdamW(m.parameters())).save({"step": 1})
    assert not (tmp_path / "ck" / "recent").exists()


def test_average_weights_is_the_elementwise_mean_in_the_files_dtypes(tmp_path):
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_file({"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16)}, a)
    save_file({"w": torch.tensor([2.0, 4.0]), "h": torch.tensor([2.0], dtype=torch.float16)}, b)
    save_file({"w": torch.tensor([6.0, 0.0]), "h": torch.tensor([6.0], dtype=torch.float16)}, c)
    mean = average_weights([a, b, c])
    assert torch.equal(mean["w"], torch.tensor([3.0, 2.0])) and mean["w"].dtype == torch.float32
    assert torch.equal(mean["h"], torch.tensor([3.0], dtype=torch.float16))


@pytest.mark.parametrize("mean_score", [0.9, 0.1], ids=["mean-better", "mean-worse"])
def test_pcv_train_average_last_saves_the_mean_only_when_it_validates_better(tmp_path, labelled, monkeypatch,
                                                                               mean_score):
    # Scores are fixed so both outcomes are tested: every step scores 0.5, the mean `mean_score`.
    averaging = []
    real_average = train_mod.average_weights
    monkeypatch.setattr(train_mod, "average_weights", lambda paths: averaging.append(paths) or real_average(paths))
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: mean_score if averaging else 0.5)
    out = tmp_path / "model"
    # with --dense-weight the checkpoint holds the classifier and a training-only head: only the former is kept
    args = [str(labelled), "--out", str(out), "--epochs", "2", "--average-last", "3", "--dense-weight", "1", *TINY]
    assert train_main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    kept = sorted((out / "checkpoint" / "recent").glob("*.safetensors"))
    assert metrics["steps"] == 12 and metrics["averaged"]["steps"] == [6, 9, 12] and len(kept) == 3
    assert metrics["averaged"]["val_accuracy"] == mean_score
    mean, saved = average_weights(kept), load_file(out / "model.safetensors")
    is_mean = all(torch.equal(saved[k], mean[k]) for k in mean)
    better = mean_score > 0.5
    assert metrics["averaged"]["saved"] == better == is_mean
    assert metrics["best_val_accuracy"] == (mean_score if better else 0.5)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["best_acc"] == metrics["best_val_accuracy"]
    # the checkpoint (what a resumed run goes on from) holds the last step's weights, not the mean
    last = load_file(kept[-1])
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(state["model." + k], last[k]) for k in last)
    assert not all(torch.equal(last[k], mean[k]) for k in mean)


def test_a_resumed_run_whose_budget_is_spent_takes_no_step(tmp_path, labelled):
    out = tmp_path / "model"
    args = [str(labelled), "--out", str(out), "--epochs", "3", "--max-minutes", "0.00001", *TINY]
    assert train_main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1
    assert train_main(args) == 0  # resumes with the budget spent
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1


@pytest.mark.parametrize("n", ["1", "-2"])
def test_average_last_needs_at_least_two_checkpoints(tmp_path, labelled, capsys, n):
    assert train_main([str(labelled), "--out", str(tmp_path / "m"), "--average-last", n, *TINY]) == 2
    assert f"--average-last {n}: 0 (off)" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
