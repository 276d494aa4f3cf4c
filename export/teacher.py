"""A fast n-gram teacher (TF-IDF + logistic regression) for distillation.

The byte-level student learns words slowly; soft labels from a word/char n-gram model give it a
dense signal and let it learn from unlabelled text. Teacher probabilities for the student's own
training texts come from cross-validation, so they are not over-confident memories.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def teacher_probs(
    train_texts: list[str],
    train_labels: npt.NDArray[np.int64],
    other_texts: list[str],
    *,
    num_labels: int,
    folds: int = 5,
    seed: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(cross-validated probs for train_texts (N, C), probs for other_texts (M, C))."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=400_000, sublinear_tf=True, lowercase=True)
    x_all = vec.fit_transform(list(train_texts) + list(other_texts))  # unsupervised: no labels used
    x_train, x_other = x_all[: len(train_texts)], x_all[len(train_texts) :]
    make = lambda: LogisticRegression(C=8.0, max_iter=2000)  # noqa: E731
    cv = np.zeros((len(train_texts), num_labels), dtype=np.float32)
    for fit_idx, pred_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x_train, train_labels):
        cv[pred_idx] = make().fit(x_train[fit_idx], train_labels[fit_idx]).predict_proba(x_train[pred_idx])
    full = make().fit(x_train, train_labels)
    other = full.predict_proba(x_other).astype(np.float32) if len(other_texts) else np.zeros((0, num_labels), np.float32)
    return cv, other

