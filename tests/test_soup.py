"""pcv-soup: the mean weights of several classifiers as one model dir (uniform), or Wortsman's greedy
soup on a labelled file; incompatible ingredients are refused by file and tensor name."""

from __future__ import annotations

import json

import torch
from conftest import ROOT, tiny_model, torch_logits
from pcv.export.modeling import load_classifier
from pcv.train.cli import soup_main
from pcv.train.soup import greedy
from safetensors.torch import load_file, save_file

BUNDLED = ROOT / "models" / "imdb-perceiver"


def _dir(tmp_path, name, model):
    d = tmp_path / name
    model.save_pretrained(d, safe_serialization=True)
    return d


def test_uniform_soup_is_the_mean_of_its_ingredients(tmp_path, review_texts):
    a, b, c = (tiny_model(seed=s) for s in (0, 1, 2))
    dirs = [_dir(tmp_path, n, m) for n, m in zip("abc", (a, b, c))]
    # a bare checkpoint file is an ingredient too (pcv-train's checkpoint/recent/step-N.safetensors)
    save_file({k: v.contiguous() for k, v in c.state_dict().items()}, tmp_path / "step-3.safetensors")
    assert soup_main([str(tmp_path / "soup"), str(dirs[0]), str(dirs[1]), str(tmp_path / "step-3.safetensors")]) == 0

    soup = load_classifier(str(tmp_path / "soup"))
    want = {k: (a.state_dict()[k] + b.state_dict()[k] + c.state_dict()[k]) / 3 for k in a.state_dict()}
    for k, v in soup.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=1e-6)
    ref = tiny_model(seed=0)
    ref.load_state_dict(want)
    torch.testing.assert_close(torch.from_numpy(torch_logits(soup, review_texts[:8], 256)),
                               torch.from_numpy(torch_logits(ref, review_texts[:8], 256)), rtol=0, atol=1e-5)
    rec = json.loads((tmp_path / "soup" / "soup.json").read_text())
    assert rec["method"] == "uniform" and [i["kept"] for i in rec["ingredients"]] == [True] * 3
    assert len({i["sha256"] for i in rec["ingredients"]}) == 3


def test_greedy_soup_drops_an_ingredient_that_hurts(tmp_path, reviews, monkeypatch):
    """The bundled model and its negation: their mean is all zeros (constant logits), so greedy keeps the
    bundled model alone, which scores better than the negation on real reviews."""
    from pcv.export import check

    passes, real_logits = [], check.torch_logits
    monkeypatch.setattr(check, "torch_logits", lambda *a, **k: passes.append(1) or real_logits(*a, **k))
    good = load_classifier(str(BUNDLED))
    bad = _dir(tmp_path, "negated", tiny_model())  # replaced below by the negated bundled weights
    good.config.save_pretrained(bad)
    save_file({k: -v.contiguous() for k, v in good.state_dict().items()}, bad / "model.safetensors")
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"][:800], "label": r["label"]}) + "\n" for r in reviews[:24]))

    assert soup_main([str(tmp_path / "soup"), str(bad), str(BUNDLED), "--greedy", str(data), "--batch-size", "8"]) == 0
    rec = json.loads((tmp_path / "soup" / "soup.json").read_text())
    negated, bundled = rec["ingredients"]
    assert bundled["kept"] and not negated["kept"] and bundled["accuracy"] > negated["accuracy"]
    assert rec["soup_accuracy"] == bundled["accuracy"] and rec["texts"] == 24
    assert len(passes) == 3  # each alone, then the pair: the best one alone is not scored again
    written = load_file(tmp_path / "soup" / "model.safetensors")
    for k, v in good.state_dict().items():
        assert torch.equal(written[k], v), k


def test_greedy_keeps_what_does_not_lower_the_score():
    table = {(0,): 0.8, (0, 1): 0.82, (0, 1, 2): 0.81, (0, 1, 3): 0.82}
    kept, best = greedy([0, 1, 2, 3], lambda idx: table[tuple(idx)])
    assert kept == [0, 1, 3] and best == 0.82


def test_soup_refuses_ingredients_of_another_architecture(tmp_path, capsys):
    a = _dir(tmp_path, "a", tiny_model(seed=0))
    wide = _dir(tmp_path, "wide", tiny_model(seed=1, num_latents=24))
    assert soup_main([str(tmp_path / "soup"), str(a), str(wide)]) == 2
    err = capsys.readouterr().err
    assert "wide/model.safetensors" in err and "latents" in err and "shape" in err
    assert not (tmp_path / "soup").exists()
    assert soup_main([str(tmp_path / "soup"), str(wide / "model.safetensors"), str(a)]) == 2
    assert "must be a model dir" in capsys.readouterr().err
    assert soup_main([str(tmp_path / "soup"), str(a), str(tmp_path / "missing")]) == 2
    assert "missing: not a model dir" in capsys.readouterr().err
