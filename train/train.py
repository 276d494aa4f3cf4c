"""pcv-train: fine-tune or train PerceiverForSequenceClassification on labelled text files.

Seeded validation split, accuracy per evaluation, best model kept (save_pretrained, safetensors),
resumable checkpoints (torch.save of tensors only, loaded with weights_only=True), a wall-clock
budget so long runs can be spread over sessions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from pcv.export import ModelSize, build_classifier, build_config, has_ngrams, load_classifier, model_size, with_ngram_head
from pcv.runtime import PerceiverByteTokenizer, ReaderConfig, read_records
from pcv.runtime.errors import InputError
from pcv.runtime.metrics import confusion, format_report, report
from pcv.runtime.readers import read_labelled
from pcv.runtime.tokenizer import text_as_read, token_lengths
from transformers import PerceiverForSequenceClassification

from .fastattn import use_fused_attention
from .loop import LoopState, average_weights, bf16_autocast, finished, group_by_length, record_eval, run_steps, save_model, say_precision, start
from .surgery import add_layers, extend_positions, patch_init, position_period, set_attention_dropout


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data: tuple[str, ...]  # labelled JSONL/CSV files
    out: str  # output model dir (HF format) + metrics.json; checkpoint/ inside for resume
    init_from: str | None = None  # pretrained HF dir or hub id; None = fresh model of `size`
    grow_layers: int | None = None  # with init_from: deepen its latent transformer to this many layers (add_layers)
    size: ModelSize = field(default_factory=ModelSize)
    init: str = "patch"  # fresh models: "patch" (byte-patch cross-attention) or "default"
    text_field: str = "text"
    label_field: str = "label"
    labels: tuple[str, ...] = ()  # names for ids 0..C-1 (labels in data may be ids or names); () = from the data, sorted
    unlabelled: tuple[str, ...] = ()  # text-only files, used through the teacher
    teacher: str = "none"  # "ngram" / "ngram-nb": distil from a TF-IDF + logistic regression teacher (teacher.KINDS)
    teacher_cache: str | None = None  # .npz of the teacher's outputs, reused while the data and settings match
    distill_weight: float = 0.5  # labelled targets = w * teacher + (1 - w) * one-hot
    ngram_head: bool | None = None  # the byte n-gram head (pcv.export.ngrams) added to the logits; None: on for a
    # fresh model, what the checkpoint has with init_from
    dense_weight: float | None = None  # > 0: dense distillation, a word-lexicon target under every latent
    # (teacher.DenseTargets); None: FRESH_DENSE_WEIGHT for a fresh patch-initialised model, else 0
    fused_attention: bool = True  # train through torch's scaled_dot_product_attention (fastattn)
    attention_dropout: float | None = None  # None: 0 for a fresh model (FRESH_ATTENTION_DROPOUT), else the model's own
    shift_augment: int | None = None  # > 0: each training text read after 0..shift_augment-1 leading spaces, drawn
    # per step; None: a fresh patch-initialised model's patch width, else 0
    splice_augment: float = 0.0  # > 0: this share of each batch replaced by splices of two pool texts, scored by the teacher
    splice_workers: int | None = None  # processes making splices ahead; None: 1 (a thread) on CPU, up to 4 on CUDA
    max_length: int | None = None  # None: the fresh size's, or the trained model's positions
    batch_size: int = 32
    lr: float | None = None  # None: FINE_TUNE.lr with init_from (the reference recipe), FRESH.lr otherwise
    weight_decay: float = 0.01
    warmup_steps: int | None = None  # None: warmup_fraction of the planned steps (of the time budget, when time-boxed)
    warmup_fraction: float = 0.05
    epochs: float | None = None  # None: FINE_TUNE / FRESH epochs; time-boxed runs: as many as the budget allows
    max_minutes: float | None = None  # stop (and save) after this much training time
    val_fraction: float = 0.1
    val_limit: int | None = None  # evaluate on at most this many validation texts
    eval_every: int = 500  # steps; also evaluated at the end
    checkpoint_every: int = 500
    average_last: int = 0  # > 1: at the end, the mean weights of the last N checkpoints, kept if they validate better
    seed: int = 0  # initialisation, batch order, augmentation
    split_seed: int = 0  # the train/validation split and the validation sample: runs with other seeds share them
    device: str = "auto"
    bf16: bool = True  # autocast on CUDA and on CPUs with bf16 instructions (loop.bf16_autocast)
    group_by_length: bool = True  # batches of similar lengths (loop.group_by_length): less padding
    limit: int | None = None  # use only the first N labelled records (quick runs, tests)
    test: tuple[str, ...] = ()  # labelled files the final model is scored on (per-class metrics), never trained on
    overwrite: bool = False  # out holds a run with other settings: replace it instead of refusing


@dataclass(frozen=True)
class Recipe:
    lr: float
    epochs: float


# Defaults by start: a trained model is fine-tuned as the reference recipe does (AdamW 5e-5, 3 epochs);
# a fresh one needs a higher rate and more passes to leave chance.
FINE_TUNE = Recipe(lr=5e-5, epochs=3.0)
FRESH = Recipe(lr=1e-3, epochs=10.0)
TIME_BOXED_EPOCHS = 1000.0  # with max_minutes and no epochs: the clock ends the run
# A fresh model trains without attention dropout: on a CPU it makes every step ~3x slower (no fused
# kernel with dropout); 3-minute tiny runs on examples/make_tickets.py's data reached 88.5-99.0 %
# validation accuracy without it against 71.5 % with transformers' 0.1 (pcv-train --size tiny --max-minutes 3).
FRESH_ATTENTION_DROPOUT = 0.0
# A fresh patch-initialised model learns words from bytes far sooner with a word target under every
# latent (dense distillation) and with each text read at every offset within a patch (shift
# augmentation): on examples/make_docstrings.py's real 4-label texts a 3-minute tiny run reached
# 54.0 % test accuracy with both against 36.6 % without, on IMDB 60.0 % against 50.8 % (validation),
# on examples/make_tickets.py 99.25 % (pcv-train --size tiny --max-minutes 3 --no-ngram-head).
FRESH_DENSE_WEIGHT = 1.0
# A fresh model gets the byte n-gram head (pcv.export.ngrams), which learns a task's words in seconds
# where the Perceiver needs many epochs: the 3-minute tiny docstrings run above reached 80.63 % test
# accuracy with it (the head alone 80.1 %, the Perceiver alone 44.4 %), IMDB 82.3 % validation. It
# trains at this multiple of the learning rate: a linear model over ~262k sparse features wants a
# larger step than the network.
NGRAM_LR_SCALE = 10.0
# A fresh head is first fitted alone for a few passes (no Perceiver forward: seconds), so that it
# knows the words however few joint steps a slow or busy machine allows; a time-boxed run gives the
# fit at most HEAD_FIT_SHARE of its budget, on top of it.
HEAD_FIT_EPOCHS = 4
HEAD_FIT_LR = NGRAM_LR_SCALE * FRESH.lr  # a fresh head's rate, also when the Perceiver is fine-tuned at 5e-5
HEAD_FIT_SHARE = 0.1
# Settings a rerun into the same out may change without being another run: where it runs, what it is
# scored on at the end, and its budget (a longer one goes on from the checkpoint; pcv-train says so).
RERUN_MAY_CHANGE = ("device", "overwrite", "test")
RERUN_BUDGET = ("epochs", "max_minutes", "eval_every", "checkpoint_every", "average_last")


def load_labelled(paths: tuple[str, ...], cfg: TrainConfig, names: tuple[str, ...] | None = None
                  ) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Texts, label ids and label names (cfg.labels, else `names`, else read from the data)."""
    return read_labelled(paths, names=cfg.labels or names, text_field=cfg.text_field, label_field=cfg.label_field,
                         limit=cfg.limit)


def check_label_counts(tr_labels: np.ndarray, id2label: dict[int, str], cfg: TrainConfig) -> None:
    """Refuse training data a classifier (or the teacher's cross-validation) cannot learn from,
    before anything is fitted: one label only, or with an n-gram teacher, a label under teacher.FOLDS examples."""
    from .teacher import FOLDS as folds
    counts = np.bincount(tr_labels, minlength=len(id2label))
    have = ", ".join(f"{id2label[i]!r} {n}" for i, n in enumerate(counts))
    hint = f" (--limit {cfg.limit} keeps the first records: is the file sorted by label?)" if cfg.limit else ""
    if (counts > 0).sum() < 2:
        raise InputError(f"{', '.join(cfg.data)}: the training part has one label only ({have}); "
                         f"a classifier needs examples of at least two{hint}")
    if cfg.teacher != "none" and counts.min() < folds:
        raise InputError(f"{', '.join(cfg.data)}: the n-gram teacher's {folds}-fold cross-validation needs at least "
                         f"{folds} training examples of every label ({have}){hint}; or --teacher none")


def load_unlabelled(paths: tuple[str, ...], cfg: TrainConfig) -> list[str]:
    rc = ReaderConfig(text_field=cfg.text_field, id_field=None)
    return [r.text for p in paths for r in read_records(p, rc) if r.text is not None]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cache_tag(kind: str, part: str = "") -> str:
    """The teacher cache's settings tag: "ngram-1" / "ngram-scorer-1" as before the "ngram-nb" teacher, so
    caches made then still load."""
    return "-".join(filter(None, (kind, part, "1")))


def split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train indices, validation indices)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def val_sample(va: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The validation texts a run evaluates on: all of them, or with val_limit a seeded sample (not the
    first N: files are often sorted by label)."""
    if not cfg.val_limit:
        return va
    return np.sort(np.random.default_rng(cfg.split_seed).permutation(va)[: cfg.val_limit])


def write_split(cfg: TrainConfig, dest: str | Path) -> dict[str, int]:
    """Write the seeded split that train() makes of cfg.data as JSONL (text, label name, index in the data):
    train.jsonl and val.jsonl, and with val_limit val-sample.jsonl (what a run selects its steps on) and
    val-rest.jsonl (the validation texts selection never saw). Returns the record count of each file."""
    texts, labels, names = load_labelled(cfg.data, cfg)
    tr, va = split(len(texts), cfg.val_fraction, cfg.split_seed)
    parts = {"train": tr, "val": va}
    if cfg.val_limit:
        sample = val_sample(va, cfg)
        parts |= {"val-sample": sample, "val-rest": np.setdiff1d(va, sample)}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, idx in parts.items():
        part = dest / f"{name}.jsonl.part"
        with open(part, "w", encoding="utf-8") as f:
            for i in idx:
                f.write(json.dumps({"text": texts[i], "label": names[labels[i]], "index": int(i)},
                                   ensure_ascii=False) + "\n")
        part.replace(dest / f"{name}.jsonl")
    return {name: len(idx) for name, idx in parts.items()}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu (or auto)")
    return device


@torch.no_grad()
def predict(model, texts: list[str], *, max_length: int, device, bf16: bool, batch_size: int = 64,
            parts: bool = False) -> np.ndarray:
    """(N,) predicted label ids, in the order of `texts`; with `parts` (a model with the byte n-gram
    head), (3, N): the Perceiver's alone, the head's alone, and the model's."""
    model.eval()
    tok = PerceiverByteTokenizer()
    order = np.argsort([len(t) for t in texts])  # length-sorted: little padding
    pred = np.zeros((3 if parts else 1, len(texts)), dtype=np.int64)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = tok([texts[i] for i in idx], max_length=max_length, truncation=True, padding="longest")
        x, m = torch.from_numpy(enc.input_ids).to(device), torch.from_numpy(enc.attention_mask).to(device)
        with bf16_autocast(device, bf16):
            if parts:
                net, head = (t.float() for t in model.parts(x, m))
                logits = torch.stack([net, head, net + head])
            else:
                logits = model(inputs=x, attention_mask=m).logits[None]
        pred[:, idx] = logits.argmax(-1).cpu().numpy()
    model.train()
    return pred if parts else pred[0]


def evaluate(model, texts: list[str], labels: np.ndarray, *, max_length: int, device, bf16: bool, batch_size: int = 64) -> float:
    pred = predict(model, texts, max_length=max_length, device=device, bf16=bf16, batch_size=batch_size)
    return float((pred == labels).mean())


def average_last(model, ckpt, state: LoopState, cfg: TrainConfig, score: Callable[[], float], out: Path) -> dict | None:
    """--average-last N: score the mean weights of the run's last N checkpoints on the validation
    sample; they become the saved model only if they beat its best step (the same selection rule)."""
    kept = ckpt.recent()[-cfg.average_last :] if cfg.average_last > 1 else []
    if len(kept) < 2:
        return None
    last = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(average_weights(kept))
    acc = score()
    steps = [int(p.stem.split("-")[1]) for p in kept]
    better = acc > state.best_acc
    print(f"mean weights of the checkpoints at steps {steps}: validation accuracy {acc:.4f} "
          f"({'saved' if better else 'not saved'}: best single step {state.best_acc:.4f})", flush=True)
    if better:
        save_model(model, out)
    model.load_state_dict(last)  # a resumed run goes on from the last step, not from the mean
    if better:
        state.best_acc = acc
        ckpt.save(state)  # and has to beat the mean to replace it
    return {"steps": steps, "val_accuracy": acc, "saved": better}


PREFILL_MIN_POOL = 10_000  # DenseMemo.prefill below this, or under 4 cores, is not worth the processes


class DenseMemo:
    """Dense targets from each pool text's lexicon words, found once per text (DenseTargets.words,
    ~0.4 ms a review: on a GPU that would be most of a step); the targets of a batch, at any shift,
    are then one bincount per batch. Pools over max_bytes (~2 KiB a review and channel) are not memoised."""

    def __init__(self, dense, pool_size: int, *, max_bytes: int = 1 << 30) -> None:
        self.dense = dense
        per_text = 2048 * (8 + 4 * dense.channels) / 12  # ~2 KiB a review with one weight per word
        self.memo: list | None = [None] * pool_size if pool_size * per_text <= max_bytes else None

    def prefill(self, texts: list[str], workers: int) -> None:
        """Find every pool text's words now, in `workers` processes. Found on first use instead, they
        held back a GPU run's whole first epoch (each run's first minute was slow, gpu-h100-8min)."""
        if self.memo is None:
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from .teacher import dense_words_of, set_worker_targets

        chunk = max(1, -(-len(texts) // (workers * 8)))
        starts = range(0, len(texts), chunk)
        # spawn, not fork: torch's thread pools (and CUDA) are already up in this process
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=set_worker_targets, initargs=(self.dense,)) as ex:
            for a, words in zip(starts, ex.map(dense_words_of, [texts[a : a + chunk] for a in starts])):
                self.memo[a : a + len(words)] = words

    def words(self, texts: list[str], idx: np.ndarray) -> list:
        """The lexicon words (teacher.Words) of pool texts `idx`, whose texts are `texts`."""
        if self.memo is None:
            return [self.dense.words(t) for t in texts]
        words = []
        for text, i in zip(texts, idx.tolist()):
            if self.memo[i] is None:
                self.memo[i] = self.dense.words(text)
            words.append(self.memo[i])
        return words


@dataclass
class Data:
    """The labelled texts, split: training part and validation sample."""

    id2label: dict[int, str]
    tr_texts: list[str]
    tr_labels: np.ndarray  # (N,) ids
    va_texts: list[str]
    va_labels: np.ndarray  # (V,) ids

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


@dataclass
class Targets:
    """What the student learns from: the pool of texts (labelled, then unlabelled) and a soft target
    distribution for each; the n-gram teacher's lexicon and splice scorer when there is one."""

    pool: list[str]
    targets: np.ndarray  # (len(pool), C)
    words: dict[str, np.ndarray] | None = None  # the dense teacher's lexicon (word -> its weights, one per channel)
    scorer: object | None = None  # teacher.NgramScorer, with splice_augment
    teacher_val_acc: float | None = None
    teacher_val_acc_cut: float | None = None  # on the first max_length tokens the student reads


def _local_config(init_from: str | None) -> dict | None:
    """A local model dir's config.json as data (None for a hub id, or a file load_classifier will refuse
    with its own message)."""
    try:
        config = json.loads((Path(init_from) / "config.json").read_text(encoding="utf-8")) if init_from else None
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _model_label_names(init_from: str | None) -> tuple[str, ...] | None:
    """A trained model's own label names (a local dir's config.json), unless they are transformers' LABEL_k."""
    if (config := _local_config(init_from)) is None:
        return None
    try:
        id2label = config.get("id2label") or {}
        names = tuple(id2label[k] for k in sorted(id2label, key=int))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return None if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def load_data(cfg: TrainConfig) -> Data:
    texts, labels, names = load_labelled(cfg.data, cfg)
    own = None if cfg.labels else _model_label_names(cfg.init_from)
    if own is not None:  # a trained model's names, when the data's labels are among them (as names or as ids)
        as_ids = all(n.isdigit() and int(n) < len(own) for n in names)
        if as_ids or set(names) <= set(own):
            pos = [int(n) if as_ids else own.index(n) for n in names]
            labels, names = np.array(pos, dtype=np.int64)[labels], own
    id2label = dict(enumerate(names))
    tr, va = split(len(texts), cfg.val_fraction, cfg.split_seed)
    va = val_sample(va, cfg)
    data = Data(id2label, [texts[i] for i in tr], labels[tr], [texts[i] for i in va], labels[va])
    check_label_counts(data.tr_labels, id2label, cfg)
    return data


def build_model(cfg: TrainConfig, data: Data) -> PerceiverForSequenceClassification:
    """A trained model (init_from; extended or grown as asked) or a fresh one of cfg.size. Made before
    the teacher is fitted, so that a bad --init-from or --grow-layers is refused at once."""
    if not cfg.init_from:
        if cfg.grow_layers:
            raise InputError("--grow-layers deepens a trained model: give --init-from too")
        model = build_classifier(build_config(cfg.size, data.id2label, ngrams=bool(cfg.ngram_head)))
        if cfg.init == "patch":
            patch_init(model)
        elif cfg.init != "default":
            raise InputError(f"--init {cfg.init!r}: use 'patch' or 'default'")
        return model
    model = load_classifier(cfg.init_from).float()  # train in fp32 whatever the file holds
    if (had := model.config.num_labels) != data.num_labels:  # a masked-LM encoder, or a classifier of other labels
        model = load_classifier(cfg.init_from, labels=data.id2label).float()
        print(f"{cfg.init_from}: a fresh classification head for {data.num_labels} labels (the checkpoint's has {had}); "
              "the encoder is the checkpoint's", flush=True)
    if cfg.max_length and cfg.max_length > (old := model.config.max_position_embeddings):
        extend_positions(model, cfg.max_length)
        print(f"{cfg.init_from}: {old} positions extended to {cfg.max_length} (learned position embeddings repeated "
              f"every {position_period(model.config)}; texts that fit the old length give the same logits)", flush=True)
    if cfg.grow_layers and cfg.grow_layers != (old := model.config.num_self_attends_per_block):
        if cfg.grow_layers < old:
            raise InputError(f"{cfg.init_from}: has {old} self-attention layers; --grow-layers {cfg.grow_layers} "
                             "can only add layers")
        add_layers(model, cfg.grow_layers)
        print(f"{cfg.init_from}: {old} self-attention layers grown to {cfg.grow_layers} (new layers start as the "
              "identity: same logits)", flush=True)
    if cfg.ngram_head is not None and cfg.ngram_head != has_ngrams(model.config):
        model = with_ngram_head(model, cfg.ngram_head)
        print(f"{cfg.init_from}: " + ("a fresh byte n-gram head added (it starts at zero: same logits)" if cfg.ngram_head
                                      else "its byte n-gram head dropped (--no-ngram-head)"), flush=True)
    return model


def fit_targets(cfg: TrainConfig, data: Data) -> Targets:
    """One-hot targets, or with a teacher its distilled mix, its targets for the unlabelled texts and,
    for splices, its scorer (all cached under cfg.teacher_cache)."""
    onehot = np.eye(data.num_labels, dtype=np.float32)[data.tr_labels]
    if cfg.teacher == "none":
        if cfg.splice_augment > 0:
            raise InputError("--splice-augment needs an n-gram teacher to score the spliced texts: --teacher ngram or ngram-nb")
        return Targets(list(data.tr_texts), onehot)
    from .teacher import cached, fingerprint, fit_teacher, kind_of, word_weights

    kind = kind_of(cfg.teacher)  # a bad name is refused before the unlabelled texts are read
    unl = load_unlabelled(cfg.unlabelled, cfg) if cfg.unlabelled else []
    t0 = time.time()
    seen = [text_as_read(t, cfg.max_length) for t in data.va_texts]  # what the student reads
    fitted: dict[str, dict[str, np.ndarray]] = {}  # the full teacher of a fit made here, for the splice scorer

    def build() -> dict[str, np.ndarray]:
        t = fit_teacher(data.tr_texts, data.tr_labels, data.va_texts + unl, num_labels=data.num_labels,
                        seed=cfg.split_seed, probe_texts=seen, kind=kind.name, with_scorer=cfg.splice_augment > 0)
        arrays = {name: t.pop(name) for name in ("cv", "other", "probe")}
        fitted["scorer"] = t  # empty unless splicing
        # the dense lexicon always, so that runs with and without dense targets share one cache
        ww = word_weights(data.tr_texts, data.tr_labels)
        weights = np.array(list(ww.values()), np.float32).reshape(len(ww), -1)  # (V, channels)
        return arrays | {"words": np.array(list(ww), dtype=str), "weights": weights}

    key = fingerprint(data.tr_texts + data.va_texts + unl + seen, data.tr_labels, data.va_labels,
                      settings=(_cache_tag(kind.name), data.num_labels, cfg.split_seed, len(data.tr_texts),
                                len(data.va_texts), "lexicon"))
    t = cached(cfg.teacher_cache, key, build)
    other = t["other"]
    words = dict(zip(t["words"].tolist(), t["weights"])) if "words" in t else None
    n_va = len(data.va_texts)
    acc = float((other[:n_va].argmax(1) == data.va_labels).mean())
    acc_cut = float((t["probe"].argmax(1) == data.va_labels).mean())
    print(f"teacher: {kind.name}, n-gram TF-IDF + LR, validation accuracy {acc:.4f}, {acc_cut:.4f} on the first "
          f"{cfg.max_length} tokens the student reads ({time.time() - t0:.0f}s)", flush=True)
    w = cfg.distill_weight
    targets = np.concatenate([w * t["cv"] + (1 - w) * onehot, other[n_va:]]).astype(np.float32)
    scorer = None
    if cfg.splice_augment > 0:
        from .teacher import NgramScorer, fit_scorer

        t0 = time.time()
        path = Path(cfg.teacher_cache) if cfg.teacher_cache else None
        scorer = NgramScorer(cached(
            path and path.with_name(path.stem + ".scorer.npz"),
            fingerprint(data.tr_texts + data.va_texts + unl, data.tr_labels,
                        settings=(_cache_tag(kind.name, "scorer"), data.num_labels)),
            lambda: fitted.pop("scorer", None) or fit_scorer(data.tr_texts, data.tr_labels, data.va_texts + unl,
                                                             kind=kind.name)))
        print(f"teacher: scorer for spliced texts ready, {len(scorer.index):,} n-grams ({time.time() - t0:.0f}s)", flush=True)
    return Targets(list(data.tr_texts) + unl, targets, words, scorer, acc, acc_cut)


def prepare_model(model, cfg: TrainConfig, data: Data, device: torch.device) -> None:
    """Labels, attention dropout and fused attention set, on the device, in training mode."""
    model.config.id2label = data.id2label
    model.config.label2id = {v: k for k, v in data.id2label.items()}
    if cfg.attention_dropout is not None:
        set_attention_dropout(model, cfg.attention_dropout)
    elif device.type == "cpu" and model.config.attention_probs_dropout_prob > 0:
        print(f"note: attention dropout {model.config.attention_probs_dropout_prob} (the model's) makes each CPU step "
              "about 3x slower (no fused attention kernel with dropout); --attention-dropout 0 turns it off", flush=True)
    model.to(device).train()
    if cfg.fused_attention:
        use_fused_attention(model)


def dense_targets(cfg: TrainConfig, model, data: Data, tg: Targets, device: torch.device, *, asked: bool = True
                  ) -> tuple[DenseMemo | None, torch.nn.Module]:
    """With dense_weight: the lexicon targets under the latents (memoised per pool text) and the
    training-only head that reads them; returns them and the module the optimizer trains. Texts
    that share no word have no lexicon: an error when --dense-weight was asked for, else a notice."""
    if cfg.dense_weight <= 0:
        return None, model
    from .teacher import DenseTargets, word_weights

    mc = model.config
    lexicon = tg.words if tg.words is not None else word_weights(data.tr_texts, data.tr_labels)
    if not lexicon:
        if asked:
            raise InputError(f"--dense-weight {cfg.dense_weight:g}: no word occurs in 3 training texts, so there is no "
                             "word lexicon to place under the latents; drop --dense-weight")
        print("dense distillation: no word occurs in 3 training texts, so there is no lexicon; training on the "
              "labels alone", flush=True)
        return None, model
    dense = DenseTargets(lexicon, num_latents=mc.num_latents, max_length=cfg.max_length,
                         positions=position_period(mc)).normalised(data.tr_texts[:2000])
    memo = DenseMemo(dense, len(tg.pool))
    workers = min(16, _cores())
    if len(tg.pool) >= PREFILL_MIN_POOL and workers >= 4:
        t0 = time.perf_counter()
        memo.prefill(tg.pool, workers)
        print(f"dense targets for {len(tg.pool):,} texts made in {time.perf_counter() - t0:.1f}s ({workers} processes)",
              flush=True)
    head = torch.nn.Linear(mc.d_latents, dense.channels).to(device)  # training only: reads word scores off each latent
    return memo, torch.nn.ModuleDict({"model": model, "dense_head": head})


class BatchLoss:
    """The loss of one batch of pool indices at a step: soft-target cross-entropy, plus the dense
    term; splices and byte shifts are drawn from (seed, step), so a resumed run sees the same batches."""

    def __init__(self, cfg: TrainConfig, model, trained: torch.nn.Module, tg: Targets, dense: DenseMemo | None,
                 splicer, device: torch.device) -> None:
        self.cfg, self.model, self.trained, self.tg, self.dense, self.splicer, self.device = (
            cfg, model, trained, tg, dense, splicer, device)
        self.tok = PerceiverByteTokenizer()

    def __call__(self, idx: np.ndarray, step: int) -> torch.Tensor:
        cfg, dense, device = self.cfg, self.dense, self.device
        batch = [self.tg.pool[i] for i in idx]
        y = self.tg.targets[idx]  # (B, C)
        words = dense.words(batch, idx) if dense is not None else None  # of the pool texts, memoised under idx
        if self.splicer is not None:  # splices replace some rows (the last batch of an epoch may have fewer)
            made = self.splicer(step)
            rows = made.rows[made.rows < len(idx)]
            y = y.copy()
            y[rows] = made.probs[: len(rows)]  # no gold label: the teacher's alone
            for k, r in enumerate(rows.tolist()):
                batch[r] = made.texts[k]
                if words is not None:
                    words[r] = made.words[k]
        shifts = None
        if cfg.shift_augment:
            shifts = np.random.default_rng([cfg.seed, step]).integers(0, cfg.shift_augment, len(idx))
        texts = batch if shifts is None else [" " * s + t for s, t in zip(shifts.tolist(), batch)]
        enc = self.tok(texts, max_length=cfg.max_length, truncation=True, padding="longest")
        x = torch.from_numpy(enc.input_ids).to(device, non_blocking=True)  # (B, T)
        m = torch.from_numpy(enc.attention_mask).to(device, non_blocking=True)
        yt = torch.from_numpy(y).to(device, non_blocking=True)
        head = getattr(self.model, "ngram", None)
        with bf16_autocast(device, cfg.bf16):
            # the Perceiver's forward (without the n-gram head's logits, added below in fp32)
            out = PerceiverForSequenceClassification.forward(self.model, inputs=x, attention_mask=m,
                                                             output_hidden_states=dense is not None)
        logits = out.logits.float()
        if head is not None:  # one loss on the sum: the head learns the words, the Perceiver what they miss
            logits = logits + head(x, m)
        loss = -(yt * torch.log_softmax(logits, -1)).sum(-1).mean()
        if dense is not None:
            t, tm = (torch.from_numpy(a).to(device) for a in dense.dense.from_words(words, shifts))
            pred = self.trained["dense_head"](out.hidden_states[-1].float())  # (B, num_latents, channels)
            loss = loss + cfg.dense_weight * (((pred - t) ** 2) * tm[..., None]).mean(-1).sum() / tm.sum()
        return loss


def make_splicer(cfg: TrainConfig, tg: Targets, dense: DenseMemo | None, device: torch.device):
    if tg.scorer is None:
        return None
    from .splice import Splicer

    # a step's 64 splices take ~0.1-0.2 s of Python here: on a GPU, with cores to spare, several processes
    return Splicer(tg.pool, tg.scorer, share=cfg.splice_augment, batch_size=cfg.batch_size, seed=cfg.seed,
                   words=dense.dense.words if dense is not None else None,
                   workers=cfg.splice_workers or (max(1, min(4, _cores() // 4)) if device.type == "cuda" else 1))


def settings_diff(old: dict, new: dict, limit: int = 400) -> str:
    """What differs, one `name old → new` each; a dict setting (the size) by its fields that differ."""
    parts = []
    for k, v in new.items():
        was = old.get(k)
        if was == v:
            continue
        if isinstance(was, dict) and isinstance(v, dict):
            parts += [f"{k}.{f} {was.get(f)!r} → {v.get(f)!r}" for f in dict.fromkeys([*was, *v]) if was.get(f) != v.get(f)]
        else:
            parts.append(f"{k} {was!r} → {v!r}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 2].rsplit(", ", 1)[0] + ", …"


def guard_out(cfg: TrainConfig, out: Path) -> dict:
    """The run dir remembers its settings (run.json): the same command resumes, a longer budget goes on
    from the checkpoint, other settings are refused unless cfg.overwrite, which clears the old run's
    files first. Returns the settings to record once the run starts (record_run)."""
    settings = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in RERUN_MAY_CHANGE}
    budget = {k: settings.pop(k) for k in RERUN_BUDGET}
    old = None
    if (out / "run.json").is_file():
        try:
            old = json.loads((out / "run.json").read_text(encoding="utf-8")).get("settings")
        except (ValueError, AttributeError):
            old = "unreadable"
    held = old is not None or (out / "checkpoint").exists() or (out / "metrics.json").exists()
    old_budget = {k: old.pop(k, None) for k in RERUN_BUDGET} if isinstance(old, dict) else {}
    if isinstance(old, dict):
        old.setdefault("ngram_head", False)  # a run recorded before the n-gram head existed had none
    if held and old != settings:
        if not cfg.overwrite:
            diff = "unknown (no readable run.json)" if not isinstance(old, dict) else settings_diff(old, settings)
            raise InputError(f"{out} holds a run with other settings ({diff}): use another --out, or --overwrite "
                             f"to replace it")
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
        for name in ("metrics.json", "run.json", "config.json", "model.safetensors"):
            (out / name).unlink(missing_ok=True)
        print(f"{out}: the earlier run's checkpoint, model and metrics removed (--overwrite)", flush=True)
    elif held and (changed := [f"{k} {old_budget.get(k)!r} → {v!r}" for k, v in budget.items() if old_budget.get(k) != v]):
        print(f"{out}: going on from the run's checkpoint with another budget ({', '.join(changed)})", flush=True)
    return settings | budget


def record_run(out: Path, settings: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps({"settings": settings}, indent=2), encoding="utf-8")
    tmp.replace(out / "run.json")


def resolve(cfg: TrainConfig, model) -> TrainConfig:
    """The defaults that depend on the start: fine-tune or fresh recipe, the model's own length."""
    recipe = FINE_TUNE if cfg.init_from else FRESH
    epochs = cfg.epochs if cfg.epochs is not None else (TIME_BOXED_EPOCHS if cfg.max_minutes else recipe.epochs)
    dropout = cfg.attention_dropout if cfg.attention_dropout is not None else (
        None if cfg.init_from else FRESH_ATTENTION_DROPOUT)
    return replace(cfg, lr=cfg.lr if cfg.lr is not None else recipe.lr, epochs=epochs, attention_dropout=dropout,
                   max_length=cfg.max_length or int(model.config.max_position_embeddings))


def resolve_signals(cfg: TrainConfig) -> TrainConfig:
    """The dense-target and byte-shift defaults, known before anything is loaded (so that the run dir
    records and compares what runs): on for a fresh patch-initialised model, off otherwise."""
    patches = not cfg.init_from and cfg.init == "patch"
    dense = cfg.dense_weight if cfg.dense_weight is not None else (FRESH_DENSE_WEIGHT if patches else 0.0)
    shift = cfg.shift_augment
    if shift is None:  # a fresh model's positions are its size's max_length
        width = max(1, round(cfg.size.max_length / cfg.size.num_latents))  # patch_init's patch width
        shift = min(width, (cfg.max_length or cfg.size.max_length) // 4) if patches else 0
    ngram = cfg.ngram_head
    if ngram is None:  # a fresh model gets the head; a trained one keeps its choice (when its dir says it)
        ngram = _model_has_ngrams(cfg.init_from) if cfg.init_from else True
    return replace(cfg, dense_weight=dense, shift_augment=shift, ngram_head=ngram)


def _model_has_ngrams(init_from: str) -> bool | None:
    """Whether a local model dir's config.json has the byte n-gram head (None when it cannot be told)."""
    config = _local_config(init_from)
    return None if config is None else has_ngrams(config)


def say_plan(cfg: TrainConfig, model, run, pool: int) -> None:
    head = getattr(model, "ngram", None)
    n_head = head.weight.numel() if head is not None else 0
    n = sum(p.numel() for p in model.parameters()) - n_head
    start = f"from {cfg.init_from}" if cfg.init_from else f"fresh, {cfg.init} initialisation"
    with_head = (f" + a byte n-gram head ({n_head:,} weights: orders {','.join(map(str, head.orders))} hashed into "
                 f"{head.buckets:,} buckets, trained at {NGRAM_LR_SCALE:g}x the learning rate)") if head is not None else ""
    print(f"model: {n:,} parameters{with_head} ({start}), {model.config.num_labels} labels, {cfg.max_length} tokens",
          flush=True)
    warm = run.warmup_steps
    if cfg.max_minutes:
        warmup = (f"warm-up {warm:,} steps" if cfg.warmup_steps is not None else
                  f"warm-up over the first {cfg.warmup_fraction:.0%} of the time")
        plan = (f"time-boxed to {cfg.max_minutes:g} min (as many steps of {cfg.batch_size} as the time allows); "
                f"lr {cfg.lr:g}, {warmup}, then cosine to 10 % following the clock")
    else:
        plan = (f"{run.total_steps:,} steps ({cfg.epochs:g} epochs of {run.steps_per_epoch:,} batches of "
                f"{cfg.batch_size} from {pool:,} texts); lr {cfg.lr:g}, warm-up {warm:,} steps, then cosine to 10 %")
    if finished(run.state, run.total_steps, cfg.max_minutes):  # a rerun of a complete run: scored, not trained
        plan = (f"the run is complete ({run.state.step:,} steps, {run.state.train_seconds / 60:.1f} min of training): "
                f"nothing left to train; a longer --epochs or --max-minutes goes on from its checkpoint")
    print(f"plan: {plan}", flush=True)
    signals = ["labels" if cfg.teacher == "none" else f"labels and the {cfg.teacher} teacher"]
    if cfg.dense_weight:
        signals.append(f"word targets under every latent (--dense-weight {cfg.dense_weight:g})")
    if cfg.shift_augment:
        signals.append(f"texts shifted by 0-{cfg.shift_augment - 1} bytes (--shift-augment {cfg.shift_augment})")
    if cfg.splice_augment:
        signals.append(f"splices in {cfg.splice_augment:.0%} of each batch")
    print(f"learns from: {'; '.join(signals)}", flush=True)
    if not cfg.max_minutes and warm >= run.total_steps:
        print(f"warning: the run ends inside its warm-up ({run.total_steps:,} steps planned, {warm:,} of warm-up): "
              f"the learning rate never reaches {cfg.lr:g}; lower --warmup-steps or train longer", flush=True)


def train(cfg: TrainConfig) -> dict:
    """Train and save the best model to cfg.out; returns the metrics written to metrics.json."""
    device = _device(cfg.device)  # a bad --device is refused before anything is written
    out = Path(cfg.out)
    dense_asked = cfg.dense_weight is not None
    cfg = resolve_signals(cfg)
    settings = guard_out(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    say_precision(device, cfg.bf16)

    data = load_data(cfg)
    model = build_model(cfg, data)
    cfg = resolve(cfg, model)
    tg = fit_targets(cfg, data)
    prepare_model(model, cfg, data, device)
    dense, trained = dense_targets(cfg, model, data, tg, device, asked=dense_asked)
    if dense is None and cfg.dense_weight:  # no lexicon: what runs is what is recorded
        cfg = replace(cfg, dense_weight=0.0)
    run = start(trained, pool_size=len(tg.pool), batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr,
                weight_decay=cfg.weight_decay, warmup=cfg.warmup_steps, warmup_fraction=cfg.warmup_fraction,
                max_minutes=cfg.max_minutes, ckpt_dir=out / "checkpoint", device=device, keep=cfg.average_last,
                kept=model, lr_scales={model.ngram: NGRAM_LR_SCALE} if has_ngrams(model.config) else None)
    say_plan(cfg, model, run, len(tg.pool))
    record_run(out, settings)  # the data, model and teacher are good: from here on out holds this run

    def score() -> float:
        return evaluate(model, data.va_texts, data.va_labels, max_length=cfg.max_length, device=device, bf16=cfg.bf16)

    def run_eval() -> None:
        acc = score()
        entry = {"step": run.state.step, "epoch": round(run.state.step / run.steps_per_epoch, 3), "val_accuracy": acc,
                 "train_seconds": round(run.state.train_seconds, 1)}
        record_eval(run.state, entry, acc, model, out)

    fresh_head = run.state.step == 0 and has_ngrams(model.config) and not model.ngram.weight.any()
    lengths = token_lengths(tg.pool, cfg.max_length) if cfg.group_by_length or fresh_head else None
    if fresh_head:
        fit_head(model.ngram, tg, data, cfg, device, lengths)
        run_eval()  # step 0 is a candidate: the saved model validates at least as well as the fitted head's start

    splicer = make_splicer(cfg, tg, dense, device)
    with splicer or contextlib.nullcontext():
        run_steps(run, model=trained, loss_of=BatchLoss(cfg, model, trained, tg, dense, splicer, device),
                  run_eval=run_eval, pool_size=len(tg.pool), batch_size=cfg.batch_size, order_seed=cfg.seed,
                  eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, max_minutes=cfg.max_minutes,
                  lengths=lengths if cfg.group_by_length else None, desc="train")
    averaged = average_last(model, run.ckpt, run.state, cfg, score, out)
    reports = final_reports(cfg, data, out, device)
    return write_metrics(cfg, model, data, tg, run, device, averaged, out, reports)


def fit_head(head: torch.nn.Module, tg: Targets, data: Data, cfg: TrainConfig, device: torch.device,
             lengths: np.ndarray) -> None:
    """Fit a fresh byte n-gram head alone on the pool's targets: HEAD_FIT_EPOCHS passes of AdamW at
    HEAD_FIT_LR, batches of similar lengths, seeded; stops early at its share of a time budget. The
    joint training then starts from it."""
    tok = PerceiverByteTokenizer()

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(texts, max_length=cfg.max_length, truncation=True, padding="longest")
        return torch.from_numpy(enc.input_ids).to(device), torch.from_numpy(enc.attention_mask).to(device)

    opt = torch.optim.AdamW(head.parameters(), lr=HEAD_FIT_LR, weight_decay=cfg.weight_decay)
    limit = cfg.max_minutes * 60 * HEAD_FIT_SHARE if cfg.max_minutes else float("inf")
    t0 = time.perf_counter()
    passes = 0
    while passes < HEAD_FIT_EPOCHS and time.perf_counter() - t0 <= limit:
        rng = np.random.default_rng([cfg.seed, 7, passes])
        order = group_by_length(rng.permutation(len(tg.pool)), lengths, cfg.batch_size, rng)
        for s in range(0, len(order), cfg.batch_size):
            if time.perf_counter() - t0 > limit:
                break
            idx = order[s : s + cfg.batch_size]
            x, m = encode([tg.pool[i] for i in idx])
            loss = -(torch.from_numpy(tg.targets[idx]).to(device) * torch.log_softmax(head(x, m), -1)).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            passes += 1
    with torch.no_grad():
        pred = np.concatenate([head(*encode(data.va_texts[s : s + 256])).argmax(-1).cpu().numpy()
                               for s in range(0, len(data.va_texts), 256)])
    cut = "" if passes == HEAD_FIT_EPOCHS else f", cut at its {HEAD_FIT_SHARE:.0%} of the time budget"
    print(f"n-gram head fitted alone first: {passes} passes over {len(tg.pool):,} texts in "
          f"{time.perf_counter() - t0:.1f}s{cut}, validation accuracy {float((pred == data.va_labels).mean()):.4f}", flush=True)


def final_reports(cfg: TrainConfig, data: Data, out: Path, device: torch.device) -> dict:
    """Per-class metrics of the saved (best) model on the validation texts and on each cfg.test file."""
    best = load_classifier(str(out)).to(device)
    names = tuple(data.id2label[i] for i in range(data.num_labels))
    sets = {"validation": (data.va_texts, data.va_labels)}
    for path in cfg.test:
        texts, labels, _ = read_labelled((path,), names=names, text_field=cfg.text_field, label_field=cfg.label_field)
        sets[f"test {path}"] = (texts, labels)
    reports = {}
    parts = has_ngrams(best.config)
    for name, (texts, labels) in sets.items():
        pred = predict(best, texts, max_length=cfg.max_length, device=device, bf16=cfg.bf16, parts=parts)
        rep = report(confusion(labels, pred[-1] if parts else pred, data.num_labels), names)
        print(f"{name} ({len(texts):,} texts), the saved model:\n{format_report(rep)}", flush=True)
        if parts:  # what each part knows alone: the sum is what the model answers
            rep["parts"] = {"perceiver": float((pred[0] == labels).mean()), "ngram_head": float((pred[1] == labels).mean())}
            print(f"  accuracy of its parts alone: the Perceiver {rep['parts']['perceiver']:.4f}, the byte n-gram head "
                  f"{rep['parts']['ngram_head']:.4f}; together {rep['accuracy']:.4f}", flush=True)
        reports[name] = rep
    return reports


def write_metrics(cfg: TrainConfig, model, data: Data, tg: Targets, run, device: torch.device, averaged: dict | None,
                  out: Path, reports: dict) -> dict:
    state = run.state
    metrics = {
        "best_val_accuracy": state.best_acc,
        "steps": state.step,
        "total_steps": run.total_steps,
        "examples_seen": state.step * cfg.batch_size,
        "train_seconds": round(state.train_seconds, 1),
        "train_size": len(data.tr_texts),
        "val_size": len(data.va_texts),
        "val_label_counts": np.bincount(data.va_labels, minlength=data.num_labels).tolist(),
        "pool_size": len(tg.pool),
        "teacher_val_accuracy": tg.teacher_val_acc,
        "teacher_val_accuracy_at_max_length": tg.teacher_val_acc_cut,
        "parameters": sum(p.numel() for p in model.parameters()),  # the n-gram head's weights included
        "ngram_head_weights": model.ngram.weight.numel() if has_ngrams(model.config) else 0,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "history": state.history,
        # the size trained, which with init_from is the loaded model's, not cfg.size
        "config": asdict(cfg) | {"size": asdict(model_size(model.config))},
        "finished": finished(state, run.total_steps, cfg.max_minutes),
    }
    if averaged:
        metrics["averaged"] = averaged
    metrics["validation"] = reports.pop("validation")
    if reports:
        metrics["test"] = {name.removeprefix("test "): rep for name, rep in reports.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
