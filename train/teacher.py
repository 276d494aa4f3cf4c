"""A fast n-gram teacher (TF-IDF + logistic regression) for distillation.

The byte-level student learns words slowly; soft labels from a word/char n-gram model give it a
dense signal and let it learn from unlabelled text. Teacher probabilities for the student's own
training texts come from cross-validation, so they are not over-confident memories.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pcv.runtime.errors import ConfigError

FOLDS = 5  # cross-validation folds for the teacher's probabilities on its own training texts
# Word tokens as sklearn's vectorizers find them: 2+ word characters.
_WORD = re.compile(r"(?u)\b\w\w+\b")


@dataclass(frozen=True)
class Kind:
    """How an n-gram teacher is made: word n-grams up to `ngram_max` (TF-IDF, sublinear tf, l2 norm, the
    `max_features` most frequent of the training and other texts), logistic regression with inverse
    regularisation `c`, on features scaled by naive-Bayes log-count ratios when `nb` (NBSVM's trick,
    Wang & Manning 2012: per label, log p(n-gram present | label) / p(present | other labels) from the
    training fold's labels)."""

    name: str
    ngram_max: int
    max_features: int
    c: float
    nb: bool


# "ngram": the bundled model's teacher; "ngram-nb": 93.00 % against its 91.56 % on the seeded 2,500 IMDB
# validation reviews, 92.56 % against 91.20 % on their first 2,048 tokens
KINDS = {k.name: k for k in (Kind("ngram", 2, 400_000, 8.0, False), Kind("ngram-nb", 3, 1_000_000, 16.0, True))}


def kind_of(name: str) -> Kind:
    if name not in KINDS:
        raise ConfigError(f"teacher {name!r}: use one of {', '.join(KINDS)}")
    return KINDS[name]


def teacher_probs(train_texts: list[str], train_labels: npt.NDArray[np.int64], other_texts: list[str], **options
                  ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(cross-validated probs for train_texts (N, C), probs for other_texts (M, C), probs for
    probe_texts (P, C)); options as fit_teacher's (num_labels, folds, seed, probe_texts, kind).
    Probe texts are only scored, never part of the vectoriser's fit, so they leave the other outputs
    unchanged (pcv-train scores the validation texts cut to the student's max_length: the ceiling a
    student of that length can reach by copying the teacher)."""
    t = fit_teacher(train_texts, train_labels, other_texts, **options)
    return t["cv"], t["other"], t["probe"]


def fit_teacher(
    train_texts: list[str],
    train_labels: npt.NDArray[np.int64],
    other_texts: list[str],
    *,
    num_labels: int,
    folds: int = FOLDS,
    seed: int = 0,
    probe_texts: Sequence[str] = (),
    kind: str = "ngram",
    with_scorer: bool = False,
) -> dict[str, np.ndarray]:
    """teacher_probs' three outputs as "cv", "other" and "probe", and with_scorer the full teacher as
    fit_scorer returns it (its other keys): one fit for both when pcv-train splices."""
    from sklearn.model_selection import StratifiedKFold

    k = kind_of(kind)
    vec = _vectoriser(k)
    x_all = vec.fit_transform(list(train_texts) + list(other_texts))  # unsupervised: no labels used
    x_train, x_other = x_all[: len(train_texts)], x_all[len(train_texts) :]
    cv = np.zeros((len(train_texts), num_labels), dtype=np.float32)
    for fit_idx, pred_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x_train, train_labels):
        cv[pred_idx] = _classifier(k).fit(x_train[fit_idx], train_labels[fit_idx]).predict_proba(x_train[pred_idx])
    full = _classifier(k).fit(x_train, train_labels)
    empty = np.zeros((0, num_labels), np.float32)
    other = full.predict_proba(x_other).astype(np.float32) if len(other_texts) else empty
    probe = full.predict_proba(vec.transform(list(probe_texts))).astype(np.float32) if len(probe_texts) else empty
    return {"cv": cv, "other": other, "probe": probe, **(_scorer_arrays(vec, full, k) if with_scorer else {})}


def _vectoriser(k: Kind):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, k.ngram_max), min_df=2, max_features=k.max_features, sublinear_tf=True,
                           lowercase=True)


def _classifier(k: Kind):
    from sklearn.linear_model import LogisticRegression

    return NbLogistic(k.c) if k.nb else LogisticRegression(C=k.c, max_iter=2000)


class NbLogistic:
    """Logistic regression on naive-Bayes-scaled features, sklearn-style (fit, predict_proba, coef_,
    intercept_). Two labels: one regression on x * r, r the log-count ratio of label 1 against label 0.
    More: one regression per label against the rest, each on its own ratios, probabilities
    normalised over labels (sklearn's one-vs-rest). coef_ holds the ratios folded in (r * w), so
    the decision is x @ coef_.T + intercept_ on the unscaled features."""

    def __init__(self, c: float) -> None:
        self.c = c

    def fit(self, x, y: npt.NDArray[np.int64]) -> NbLogistic:
        import scipy.sparse as sp
        from sklearn.linear_model import LogisticRegression

        self.classes_ = np.unique(y)
        present = (x > 0).astype(np.float64)
        tasks = [y == self.classes_[1]] if len(self.classes_) == 2 else [y == c for c in self.classes_]
        coef, intercept = [], []
        for mine in tasks:
            p = np.asarray(present[mine].sum(0)).ravel() + 1.0  # add-one smoothing
            q = np.asarray(present[~mine].sum(0)).ravel() + 1.0
            r = np.log(p / p.sum()) - np.log(q / q.sum())
            lr = LogisticRegression(C=self.c, max_iter=3000).fit(x @ sp.diags(r), mine.astype(np.int64))
            coef.append(lr.coef_[0] * r)
            intercept.append(lr.intercept_[0])
        self.coef_, self.intercept_ = np.array(coef), np.array(intercept)
        return self

    def predict_proba(self, x) -> npt.NDArray[np.float64]:
        return _link(np.asarray(x @ self.coef_.T) + self.intercept_, ovr=True)


def _link(z: npt.NDArray[np.float64], *, ovr: bool) -> npt.NDArray[np.float64]:
    """Probabilities from decision values (N, 1) for two labels (sklearn's sigmoid), else (N, C):
    one-vs-rest sigmoids normalised, or a softmax (multinomial regression)."""
    if z.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p, p], 1)
    if ovr:
        p = 1.0 / (1.0 + np.exp(-z))
        return p / p.sum(1, keepdims=True)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def fit_scorer(train_texts: list[str], train_labels: npt.NDArray[np.int64], other_texts: list[str],
               *, kind: str = "ngram") -> dict[str, np.ndarray]:
    """The teacher as teacher_probs fits it on all of train_texts (its vectoriser on train + other texts),
    as plain arrays for NgramScorer: it then scores texts made during training (pcv-train
    --splice-augment) and can be cached without pickle."""
    k = kind_of(kind)
    vec = _vectoriser(k)
    x_all = vec.fit_transform(list(train_texts) + list(other_texts))
    return _scorer_arrays(vec, _classifier(k).fit(x_all[: len(train_texts)], train_labels), k)


def _scorer_arrays(vec, lr, k: Kind) -> dict[str, np.ndarray]:
    vocab = vec.get_feature_names_out().tolist()
    assert not any("\n" in v for v in vocab), "n-grams are word characters and spaces"
    return {"vocab": np.frombuffer("\n".join(vocab).encode("utf-8"), np.uint8), "idf": vec.idf_.astype(np.float32),
            "coef": lr.coef_.astype(np.float32), "intercept": lr.intercept_.astype(np.float32),
            "ngram_max": np.array(k.ngram_max), "ovr": np.array(k.nb)}  # NbLogistic: one-vs-rest sigmoids past two labels


class NgramScorer:
    """The fitted n-gram teacher in numpy: TF-IDF of lower-cased word n-grams (sublinear tf, l2
    norm) and logistic regression, as sklearn computes them (tests compare it to predict_proba).
    Built from fit_scorer's arrays; a review takes ~0.9 ms (ngram) or ~1.8 ms (ngram-nb's 1-3-grams) on a
    2-core CPU: dict lookups of its n-grams."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        vocab = bytes(arrays["vocab"]).decode("utf-8").split("\n")
        self.index = {v: i for i, v in enumerate(vocab)}
        self.idf = arrays["idf"].astype(np.float64)
        # (F, 1) for two labels, else (F, C): a row per n-gram, gathered by a text's ids
        self.coef = np.ascontiguousarray(arrays["coef"].T, dtype=np.float64)
        self.intercept = arrays["intercept"].astype(np.float64)
        # scorers cached before the "ngram-nb" teacher: 1-2-grams, binary or multinomial
        self.ngram_max = int(arrays["ngram_max"]) if "ngram_max" in arrays else 2
        self.ovr = bool(arrays["ovr"]) if "ovr" in arrays else False

    def features(self, text: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(feature ids, tf-idf values) of one text, l2-normalised."""
        words = _WORD.findall(text.lower())
        get = self.index.get
        found = [get(w) for w in words]
        for n in range(2, self.ngram_max + 1):
            found += [get(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)]
        ids, counts = np.unique(np.array([i for i in found if i is not None], np.int64), return_counts=True)
        x = (np.log(counts) + 1.0) * self.idf[ids]
        norm = np.sqrt((x * x).sum())
        return ids, x / norm if norm > 0 else x

    def __call__(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Probabilities (N, C)."""
        z = np.empty((len(texts), len(self.intercept)))
        for r, text in enumerate(texts):
            ids, x = self.features(text)
            z[r] = x @ self.coef[ids] + self.intercept
        return _link(z, ovr=self.ovr).astype(np.float32)


def fingerprint(texts: Iterable[str], *arrays: npt.NDArray, settings: object = ()) -> str:
    """A sha256 of the teacher's inputs: the texts in order, the label arrays and any settings."""
    h = hashlib.sha256(repr(settings).encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little") + b)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cached(path: str | Path | None, key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Teacher outputs kept in an .npz under the fingerprint of their inputs (pcv-train --teacher-cache):
    a later run or a resume on the same data loads them instead of fitting the teacher again; a file
    made from other data or settings is rebuilt, never used. Loaded with allow_pickle=False."""
    if path is None:
        return build()
    path = Path(path)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if "key" in z.files and str(z["key"]) == key:
                print(f"teacher: loaded from {path}", flush=True)
                return {k: z[k] for k in z.files if k != "key"}
        print(f"teacher: {path} was made from other data or settings: fitted again and replaced", flush=True)
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # np.savez would add .npz to a bare name
        np.savez_compressed(f, key=np.array(key), **arrays)  # the scorer's n-grams shrink 4x
    tmp.replace(path)
    return arrays


def word_weights(texts: list[str], labels: npt.NDArray[np.int64], *, c: float = 0.5) -> dict[str, npt.NDArray[np.float32]]:
    """A lexicon: the logistic-regression weights of each lower-cased word's presence, one per channel:
    a single channel for two labels (positive = label 1), one per label past two (multinomial). The
    dense teacher places these weights under the latents."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    if len(set(labels.tolist())) < 2:
        raise ConfigError("the dense word teacher needs at least two labels")
    vec = CountVectorizer(binary=True, min_df=min(3, len(texts)), lowercase=True)
    try:
        x = vec.fit_transform(texts)
    except ValueError:  # no word in at least min_df texts (few or wordless texts): no lexicon
        return {}
    coef = LogisticRegression(C=c, max_iter=2000).fit(x, labels).coef_.astype(np.float32)  # (1, V) or (C, V)
    return dict(zip(vec.get_feature_names_out().tolist(), coef.T))


_WORKER_TARGETS: DenseTargets | None = None  # set in each DenseMemo.prefill process


def set_worker_targets(dense: DenseTargets) -> None:
    global _WORKER_TARGETS
    _WORKER_TARGETS = dense


def dense_words_of(texts: list[str]) -> list[Words]:
    assert _WORKER_TARGETS is not None, "set_worker_targets first"
    return [_WORKER_TARGETS.words(t) for t in texts]


# A text's lexicon words as DenseTargets places them: (token positions of their first bytes, their
# weights (n, channels), the text's UTF-8 length).
Words = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], int]


class DenseTargets:
    """Per-latent targets for dense distillation.

    Latent i of a patch-initialised model starts reading bytes [i*W, (i+1)*W) of the input
    (W = positions / num_latents, the model's position embeddings per latent, not always whole; position 0 is
    [CLS]). Its target is the summed lexicon weight of the words that start in that window (a
    vector of `channels`: one for two labels, one per label past two), so every latent gets a
    signal, not only the pooled output. Inputs are cut at max_length tokens
    (positions defaults to it); with max_length > positions the windows repeat every `positions`
    tokens, as the position embeddings of an extended model do (modeling.extend_positions).
    `__call__` gives (targets (B, N, channels), mask (B, N) of latents over real bytes).
    """

    def __init__(self, weights: dict, *, num_latents: int, max_length: int, positions: int | None = None) -> None:
        positions = positions or max_length
        # a word's weight: a number (one channel) or a vector of them
        self.weights = {k: np.atleast_1d(np.asarray(v, np.float32)) for k, v in weights.items()}
        sizes = {len(v) for v in self.weights.values()}
        if len(sizes) > 1:
            raise ConfigError(f"the lexicon's weights have {len(sizes)} different lengths")
        self.channels = sizes.pop() if sizes else 1
        self.n, self.max_length, self.positions = num_latents, max_length, positions

    def normalised(self, texts: list[str]) -> DenseTargets:
        """The same targets scaled to unit RMS over the latents of `texts` (a sample of the pool), so
        one dense weight suits any lexicon and window."""
        t, m = self(texts)
        rms = float(np.sqrt((t**2 * m[..., None]).sum() / max(1.0, m.sum() * self.channels))) or 1.0
        return DenseTargets({k: v / rms for k, v in self.weights.items()}, num_latents=self.n, max_length=self.max_length,
                            positions=self.positions)

    def words(self, text: str) -> Words:
        """The lexicon words of `text` that a model reading max_length tokens sees (the Python loop
        over its words: ~0.4 ms a review; DenseMemo keeps the result)."""
        ascii_ = text.isascii()
        offsets = None if ascii_ else np.concatenate([[0], np.cumsum([len(ch.encode("utf-8", "surrogatepass")) for ch in text])])
        n_bytes = len(text) if ascii_ else int(offsets[-1])
        pos: list[int] = []
        weight: list[npt.NDArray[np.float32]] = []
        for m in _WORD.finditer(text):
            p = 1 + (m.start() if ascii_ else int(offsets[m.start()]))  # after [CLS]
            if p >= self.max_length:
                break
            w = self.weights.get(m.group().lower())
            if w is not None:
                pos.append(p)
                weight.append(w)
        return (np.array(pos, np.int64), np.array(weight, np.float32).reshape(len(pos), self.channels), n_bytes)

    def from_words(self, words: list[Words], shifts: npt.NDArray[np.int64] | None = None
                   ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Targets and mask of texts given by their words, each read after shifts[row] leading spaces
        (the same as those of the shifted texts: spaces are no words, they only move the bytes)."""
        b = len(words)
        shift = np.zeros(b, np.int64) if shifts is None else np.asarray(shifts, np.int64)
        n_bytes = np.fromiter((w[2] for w in words), np.int64, b)
        used = np.minimum(n_bytes + shift + 2, self.max_length)  # [CLS] + bytes + [SEP], truncated
        # past n when the windows repeat: all of them
        mask = (np.arange(self.n) < np.ceil(used * self.n / self.positions)[:, None]).astype(np.float32)
        counts = np.fromiter((len(w[0]) for w in words), np.int64, b)
        rows = np.repeat(np.arange(b), counts)
        pos = (np.concatenate([w[0] for w in words]) if b else np.zeros(0, np.int64)) + shift[rows]
        weight = np.concatenate([w[1] for w in words]) if b else np.zeros((0, self.channels), np.float32)
        keep = pos < used[rows] - 1  # content bytes sit at 1 .. used - 2; [SEP] takes the last place
        cell = rows[keep] * self.n + (pos[keep] % self.positions) * self.n // self.positions
        c = self.channels
        flat = (cell[:, None] * c + np.arange(c)).ravel()  # one bincount over (cell, channel)
        targets = np.bincount(flat, weights=weight[keep].ravel(), minlength=b * self.n * c)
        return targets.reshape(b, self.n, c).astype(np.float32), mask

    def __call__(self, texts: list[str], shifts: npt.NDArray[np.int64] | None = None
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(targets (B, N, channels), mask (B, N) of latents over real bytes), each text after shifts[row] spaces."""
        return self.from_words([self.words(t) for t in texts], shifts)
