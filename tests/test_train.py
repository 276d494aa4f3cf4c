"""pcv-train on a small labelled file: metrics, best model saved as safetensors, resume, label names."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from pcv.export.modeling import load_classifier
from pcv.train import loop
from pcv.train.cli import train_main
from pcv.train.loop import _cpu_has_bf16, bf16_autocast, say_precision
from pcv.train.train import split

TINY = ["--num-latents", "8", "--d-latents", "32", "--d-model", "64", "--num-layers", "1", "--self-heads", "2",
        "--cross-heads", "2", "--max-length", "128", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2",
        "--eval-every", "3", "--checkpoint-every", "3"]


@pytest.fixture()
def labelled(tmp_path, reviews):
    p = tmp_path / "train.jsonl"
    rows = [{"text": r["text"], "label": ["neg", "pos"][r["label"]]} for r in reviews[:48]]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def test_train_saves_best_model_metrics_and_resumes(tmp_path, labelled, capsys):
    out = tmp_path / "model"
    assert train_main([str(labelled), "--out", str(out), "--epochs", "1", *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["val_size"] == 5 and metrics["finished"]
    mode = (out / "model.safetensors").stat().st_mode & 0o777  # readable as the umask allows, not safetensors' 0600
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert 0.0 <= metrics["best_val_accuracy"] <= 1.0 and len(metrics["history"]) >= 2
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    m = load_classifier(str(out))
    assert m.config.id2label == {0: "neg", 1: "pos"} and m.config.label2id == {"neg": 0, "pos": 1}
    # the same command resumes from the checkpoint (here: nothing left to do)
    assert train_main([str(labelled), "--out", str(out), "--epochs", "1", *TINY]) == 0
    said = capsys.readouterr().out
    assert "resumed from" in said and "plan: the run is complete (6 steps" in said
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    # a longer budget goes on from the checkpoint, and says so
    assert train_main([str(labelled), "--out", str(out), "--epochs", "2", *TINY]) == 0
    said = capsys.readouterr().out
    assert "another budget (epochs 1.0 → 2.0)" in said and "resumed from" in said
    assert json.loads((out / "metrics.json").read_text())["steps"] == 12
    # other settings are another run: refused (nothing touched), or with --overwrite trained anew
    other = ["--num-latents", "16", *TINY[2:]]  # 16 latents instead of 8
    assert train_main([str(labelled), "--out", str(out), "--epochs", "2", *other]) == 2
    # the default byte shift follows the patch width: 128 positions over 8 latents, then over 16
    assert "holds a run with other settings (size.num_latents 8 → 16, shift_augment 16 → 8): use another --out" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 12
    assert train_main([str(labelled), "--out", str(out), "--epochs", "1", "--overwrite", *other]) == 0
    assert "resumed from" not in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


@pytest.mark.parametrize("precision", [[], ["--no-bf16"]], ids=["default", "fp32"])
def test_train_learns_a_trivial_task(tmp_path, precision):
    # A task any working training loop learns in a few steps: the label is the first byte. Both with
    # the default (bf16 autocast where the CPU has bf16 instructions) and in plain fp32.
    p = tmp_path / "easy.jsonl"
    rows = [{"text": ("a" if i % 2 else "z") + " filler text" * 3, "label": i % 2} for i in range(160)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "easy"
    # labels alone (no word targets or byte shifts): the loop itself must learn
    assert train_main([str(p), "--out", str(out), "--epochs", "4", *TINY, *precision, "--dense-weight", "0",
                       "--shift-augment", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_val_accuracy"] == 1.0 and metrics["config"]["bf16"] == (not precision)


def test_bf16_autocast_follows_the_flag_and_the_cpu(monkeypatch, capsys):
    a, cpu = torch.ones(4, 4), torch.device("cpu")
    with bf16_autocast(cpu, False):
        assert (a @ a).dtype == torch.float32
    with bf16_autocast(cpu, True):
        assert (a @ a).dtype == (torch.bfloat16 if _cpu_has_bf16() else torch.float32)
    # a CPU without bf16 instructions trains in fp32 and says so (no silent change of precision)
    monkeypatch.setattr(loop, "_cpu_has_bf16", lambda: False)
    with bf16_autocast(cpu, True):
        assert (a @ a).dtype == torch.float32
    say_precision(cpu, True)
    assert "training in fp32" in capsys.readouterr().out
    say_precision(cpu, False)
    assert capsys.readouterr().out == ""


def test_bad_labels_name_the_line(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "neg"}\n{"text": "b", "label": "maybe"}\n')
    assert train_main([str(p), "--out", str(tmp_path / "o"), "--labels", "neg,pos", *TINY]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "'maybe'" in err and "--labels" in err


def test_split_is_seeded_and_disjoint():
    a, b = split(1000, 0.1, 0)
    assert len(b) == 100 and not set(a) & set(b)
    assert (split(1000, 0.1, 0)[1] == b).all() and not (split(1000, 0.1, 1)[1] == b).all()


def test_patch_init_makes_each_head_look_at_one_byte_of_its_patch():
    import torch
    from pcv.export.modeling import ModelSize, build_config
    from pcv.train.surgery import patch_init
    from transformers import PerceiverForSequenceClassification

    torch.manual_seed(0)
    m = PerceiverForSequenceClassification(build_config(ModelSize(num_latents=64, max_length=512, num_layers=1))).eval()
    patch_init(m)
    with torch.no_grad():
        att = m(inputs=torch.randint(6, 262, (1, 512)), output_attentions=True).cross_attentions[0][0]  # (H, N, L)
    heads, latents, _ = att.shape
    want = torch.arange(latents)[None, :] * (512 // latents) + torch.arange(heads)[:, None]  # (H, N)
    assert (att.argmax(-1) == want).float().mean() > 0.95
    assert att.max(-1).values.mean() > 0.5  # sharp, not uniform


def test_val_limit_samples_both_labels_of_a_sorted_file(tmp_path):
    # IMDB's train file is sorted by label: the first N validation rows would all be negative.
    p = tmp_path / "sorted.jsonl"
    p.write_text("".join(json.dumps({"text": f"t{i}", "label": int(i >= 500)}) + "\n" for i in range(1000)))
    out = tmp_path / "m"
    assert train_main([str(p), "--out", str(out), "--epochs", "0.1", "--val-fraction", "0.5", "--val-limit", "40", *TINY]) == 0
    neg, pos = json.loads((out / "metrics.json").read_text())["val_label_counts"]
    assert neg + pos == 40 and 10 < pos < 30


def test_write_split_writes_the_split_a_run_trains_and_selects_on(tmp_path):
    p = tmp_path / "sorted.jsonl"
    p.write_text("".join(json.dumps({"text": f"t{i}", "label": int(i >= 500)}) + "\n" for i in range(1000)))
    flags = ["--val-fraction", "0.2", "--val-limit", "40", "--split-seed", "3", "--labels", "neg,pos"]
    assert train_main([str(p), "--write-split", str(tmp_path / "split"), *flags, "--seed", "7"]) == 0
    part = {n: [json.loads(line) for line in open(tmp_path / "split" / f"{n}.jsonl")]
            for n in ("train", "val", "val-sample", "val-rest")}
    idx = {n: [r["index"] for r in rows] for n, rows in part.items()}
    tr, va = split(1000, 0.2, 3)
    assert idx["train"] == tr.tolist() and idx["val"] == va.tolist()
    assert sorted(idx["val-sample"] + idx["val-rest"]) == idx["val"] and len(idx["val-sample"]) == 40
    assert all(r["text"] == f"t{r['index']}" and r["label"] == ("neg", "pos")[r["index"] >= 500]
               for rows in part.values() for r in rows)
    out = tmp_path / "m"
    assert train_main([str(p), "--out", str(out), "--epochs", "0.05", *flags, *TINY, "--seed", "5"]) == 0  # another training seed, the same sample
    counts = json.loads((out / "metrics.json").read_text())["val_label_counts"]
    assert counts == [sum(r["label"] == name for r in part["val-sample"]) for name in ("neg", "pos")]
    with pytest.raises(SystemExit, match="2"):  # neither --out nor --write-split: argparse's usage error
        train_main([str(p)])


def test_group_by_length_is_a_permutation_with_little_padding():
    from pcv.runtime.tokenizer import token_lengths
    from pcv.train.loop import group_by_length

    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 2048, size=1000)
    order = rng.permutation(1000)
    grouped = group_by_length(order, lengths, 32, np.random.default_rng(1), megabatch=8)
    assert sorted(grouped.tolist()) == list(range(1000))  # every text once
    last = order[768:]  # the last chunk of 8 batches; its 8 shortest texts make the short batch at the end
    assert sorted(grouped[992:].tolist()) == sorted(last[np.argsort(lengths[last])[:8]].tolist())

    def padded(o):  # tokens a step computes: each batch pads to its longest text
        return sum(lengths[o[s : s + 32]].max() * len(o[s : s + 32]) for s in range(0, len(o), 32))

    assert padded(grouped) < 0.7 * padded(order)
    again = group_by_length(order, lengths, 32, np.random.default_rng(1), megabatch=8)
    np.testing.assert_array_equal(grouped, again)  # seeded: a resumed run sees the same batches
    assert token_lengths(["ab", "é", "x" * 100], 50).tolist() == [4, 4, 50]


def test_set_attention_dropout_reaches_every_attention_and_the_config():
    from pcv.train.fastattn import use_fused_attention
    from pcv.train.surgery import set_attention_dropout
    from transformers import PerceiverConfig, PerceiverForSequenceClassification
    from transformers.models.perceiver.modeling_perceiver import PerceiverSelfAttention

    torch.manual_seed(0)
    model = PerceiverForSequenceClassification(PerceiverConfig(
        num_latents=8, d_latents=32, d_model=64, num_blocks=1, num_self_attends_per_block=2, num_self_attention_heads=2,
        num_cross_attention_heads=2, max_position_embeddings=64, num_labels=2, attention_probs_dropout_prob=0.1))
    use_fused_attention(model)
    model.train()
    x = torch.randint(6, 262, (2, 40))

    def twice() -> tuple[torch.Tensor, torch.Tensor]:
        return model(inputs=x).logits, model(inputs=x).logits

    a, b = twice()
    assert not torch.equal(a, b)  # dropout on: two training forwards differ
    n = set_attention_dropout(model, 0.0)
    assert n == sum(isinstance(m, PerceiverSelfAttention) for m in model.modules()) == 4  # cross, 2 self, decoder
    assert model.config.attention_probs_dropout_prob == 0.0
    a, b = twice()
    assert torch.equal(a, b)  # off: the fused training path is deterministic
    with pytest.raises(ValueError, match="attention dropout 1.0"):
        set_attention_dropout(model, 1.0)


def test_attention_dropout_flag_is_saved_and_checked(tmp_path, labelled, capsys):
    out = tmp_path / "m"
    assert train_main([str(labelled), "--out", str(out), "--epochs", "1", *TINY]) == 0  # a fresh model: 0 by default
    assert "turns it off" not in capsys.readouterr().out
    assert load_classifier(str(out)).config.attention_probs_dropout_prob == 0.0
    assert json.loads((out / "metrics.json").read_text())["config"]["attention_dropout"] == 0.0
    out = tmp_path / "m1"
    assert train_main([str(labelled), "--out", str(out), "--epochs", "1", "--attention-dropout", "0.1", *TINY]) == 0
    assert load_classifier(str(out)).config.attention_probs_dropout_prob == 0.1
    # a model trained on keeps its own; 0.1 on a CPU gets the hint
    ft = tmp_path / "ft"
    assert train_main([str(labelled), "--out", str(ft), "--epochs", "1", "--init-from", str(out), "--batch-size", "8",
                       "--max-length", "128"]) == 0
    assert "--attention-dropout 0 turns it off" in capsys.readouterr().out
    assert load_classifier(str(ft)).config.attention_probs_dropout_prob == 0.1
    assert train_main([str(labelled), "--out", str(out), "--attention-dropout", "1.5", *TINY]) == 2
    assert "--attention-dropout 1.5: a probability in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("main", ["train", "pretrain"])
def test_a_device_torch_cannot_use_is_refused_before_anything_is_written(tmp_path, labelled, capsys, monkeypatch, main):
    from pcv.train.cli import pretrain_main

    run = train_main if main == "train" else pretrain_main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU-only machine
    out = tmp_path / "o"
    assert run([str(labelled), "--out", str(out), "--device", "cuda", *TINY]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: torch" in err and "sees no CUDA GPU" in err
    assert not out.exists()
    assert run([str(labelled), "--out", str(out), "--device", "tpu0", *TINY]) == 2
    assert "--device tpu0:" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("teacher", ["none", "ngram"])
def test_one_label_only_is_refused_with_the_file_and_a_hint(tmp_path, reviews, capsys, teacher):
    p = tmp_path / "sorted.jsonl"  # sorted by label, as IMDB's train file is: --limit keeps negatives only
    rows = sorted(({"text": r["text"], "label": ["neg", "pos"][r["label"]]} for r in reviews[:48]), key=lambda r: r["label"])
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "m"
    assert train_main([str(p), "--out", str(out), "--limit", "20", "--teacher", teacher, *TINY]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "one label only" in err and "'neg' " in err and "--limit 20" in err


def test_the_teacher_needs_five_examples_of_each_label(tmp_path, reviews, capsys):
    p = tmp_path / "few.jsonl"
    neg = [r for r in reviews if r["label"] == 0][:20]
    pos = [r for r in reviews if r["label"] == 1][:3]
    p.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in neg + pos), encoding="utf-8")
    args = [str(p), "--out", str(tmp_path / "m"), "--val-fraction", "0.01", *TINY]
    assert train_main([*args, "--teacher", "ngram"]) == 2
    assert "5-fold cross-validation needs at least 5 training examples of every label" in capsys.readouterr().err
    assert train_main([*args, "--teacher", "none", "--epochs", "1"]) == 0  # without the teacher three are enough


def test_size_problem_says_exactly_which_sizes_cannot_be_built():
    """size_problem (checked at parse time) agrees with transformers and the patch initialisation."""
    import random
    import warnings

    from pcv.export.modeling import build_config
    from pcv.export.sizes import SIZE_PRESETS, ModelSize, size_problem
    from pcv.train.surgery import patch_init
    from transformers import PerceiverForSequenceClassification

    assert all(size_problem(s) is None for s in SIZE_PRESETS.values())
    rng = random.Random(0)
    for _ in range(80):
        s = ModelSize(num_latents=rng.choice([4, 8]), d_latents=rng.choice([4, 8, 12, 16, 24, 32]),
                      d_model=rng.choice([4, 8, 12, 16, 32]), num_layers=1, self_heads=rng.choice([1, 2, 3, 4]),
                      cross_heads=rng.choice([1, 2, 3, 4, 8]), max_length=64, qk_channels=rng.choice([None, None, 8, 12, 16]),
                      v_channels=rng.choice([None, None, 8, 12, 16, 24]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                patch_init(PerceiverForSequenceClassification(build_config(s)))
            built = True
        except Exception:
            built = False
        assert (size_problem(s) is None) == built, s


def test_sizes_are_checked_before_any_data_is_read(tmp_path, capsys):
    assert train_main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"), "--size", "tiny",
                       "--cross-heads", "1"]) == 2
    err = capsys.readouterr().err
    assert "patch initialisation" in err and "d_model >= 128" in err and "missing" not in err


def test_labels_come_from_the_data_and_the_run_reports_per_class(tmp_path, capsys):
    """Three labels named in the data, none given on the command line; the plan, per-class metrics on the
    validation texts and on a --test file."""
    words = {"sport": "goal match team score", "music": "song guitar album band", "food": "bread soup cook taste"}
    rows = [{"text": f"{words[k].split()[i % 4]} " * 6, "label": k} for i in range(90) for k in words]
    p = tmp_path / "three.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    out = tmp_path / "m"
    assert train_main([str(p), "--out", str(out), "--size", "tiny", "--max-length", "64", "--epochs", "2",
                       "--eval-every", "50", "--test", str(test)]) == 0
    said = capsys.readouterr().out
    assert "parameters + a byte n-gram head (786,417 weights" in said and "(fresh, patch initialisation), 3 labels" in said
    assert "plan: " in said and "warm-up" in said
    m = json.loads((out / "metrics.json").read_text())
    assert m["validation"]["labels"] == ["food", "music", "sport"] and set(m["validation"]["per_class"]) == set(words)
    assert m["test"][str(test)]["n"] == 30 and "confusion" in said
    assert load_classifier(str(out)).config.id2label == {0: "food", 1: "music", 2: "sport"}


def test_a_trained_model_gets_a_fresh_head_for_other_labels(tmp_path, labelled, capsys):
    two = tmp_path / "two"
    assert train_main([str(labelled), "--out", str(two), "--epochs", "1", *TINY]) == 0
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    three = tmp_path / "three.jsonl"
    three.write_text("".join(json.dumps({"text": r["text"], "label": ["a", "b", "c"][i % 3]}) + "\n" for i, r in enumerate(rows)))
    out = tmp_path / "m"
    assert train_main([str(three), "--out", str(out), "--init-from", str(two), "--epochs", "1", "--batch-size", "8",
                       "--eval-every", "3"]) == 0  # no --max-length: the model's own positions
    assert "a fresh classification head for 3 labels (the checkpoint's has 2)" in capsys.readouterr().out
    assert load_classifier(str(out)).config.id2label == {0: "a", 1: "b", 2: "c"}


def test_settings_diff_names_the_fields_that_differ_and_marks_a_cut():
    from pcv.train.train import settings_diff

    old = {"size": {"num_latents": 64, "d_model": 64}, "lr": 1e-3, "seed": 0}
    new = {"size": {"num_latents": 256, "d_model": 64}, "lr": 1e-3, "seed": 1}
    assert settings_diff(old, new) == "size.num_latents 64 → 256, seed 0 → 1"
    long = settings_diff({f"k{i}": 0 for i in range(100)}, {f"k{i}": 1 for i in range(100)}, limit=60)
    assert long.endswith(", …") and len(long) <= 60 and long.startswith("k0 0 → 1, k1 0 → 1")


def test_a_time_boxed_run_that_spent_its_budget_is_finished():
    from pcv.train.loop import LoopState, finished

    state = LoopState()
    state.step, state.train_seconds = 167, 180.2
    assert finished(state, 57_000, 3.0) and not finished(state, 57_000, 4.0) and finished(state, 167, None)
