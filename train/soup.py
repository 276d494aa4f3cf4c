"""Model soups: one classifier whose weights are the mean of several fine-tuned from the same start.

Runs that start from one model and train on with other seeds, teachers or augmentations end in the
same basin; the mean of their weights (Wortsman et al. 2022, "Model soups") is often more accurate
than any one of them and costs nothing at inference, unlike an ensemble of the same models.

- uniform: the mean of every ingredient;
- greedy: the ingredients in order of their own accuracy on a held-out labelled file, each one
  kept only if the soup with it scores no worse there (the soup never scores below its best
  ingredient on that file). The file must be one that no ingredient was selected on: a run's best
  step, picked on its selection sample, scores high there by selection as well as by skill, and
  greedy then keeps that run alone. Nor the texts you report on.

Ingredients are model dirs (config.json + model.safetensors) or bare .safetensors weights (pcv-train
keeps its last checkpoints as checkpoint/recent/step-N.safetensors); the first must be a dir: its
config describes the soup. Safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pcv.export import load_classifier
from pcv.runtime.errors import ModelError
from pcv.runtime.modelfile import file_sha256

from .loop import average_weights, save_model


@dataclass(frozen=True, kw_only=True)
class SoupConfig:
    models: tuple[str, ...]  # the ingredients: model dirs or .safetensors files, the first a dir
    out: str  # the soup's model dir: config.json, model.safetensors, soup.json
    data: str | None = None  # labelled file: greedy selection on it (None: the uniform soup)
    text_field: str = "text"
    label_field: str = "label"
    limit: int | None = None  # score on the first N records of data
    batch_size: int = 32


@dataclass(frozen=True)
class Ingredient:
    source: str  # as given
    weights: Path  # its safetensors file
    sha256: str


def ingredient(source: str) -> Ingredient:
    path = Path(source).expanduser()
    weights = path / "model.safetensors" if path.is_dir() else path
    if weights.suffix != ".safetensors" or not weights.is_file():
        raise ModelError(f"{source}: not a model dir with model.safetensors nor a .safetensors file")
    return Ingredient(source, weights, file_sha256(weights))


def check_compatible(model: torch.nn.Module, items: list[Ingredient]) -> None:
    """Every ingredient holds the soup model's tensors, by name and shape (the first one that does
    not is named, with the key)."""
    from safetensors import safe_open

    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for item in items:
        with safe_open(str(item.weights), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        for k, shape in want.items():
            if k not in have:
                raise ModelError(f"{item.weights}: no tensor {k!r}; ingredients must share the first one's architecture")
            if have[k] != shape:
                raise ModelError(f"{item.weights}: tensor {k!r} has shape {have[k]}, the first ingredient's "
                                 f"{shape}; ingredients must share its architecture")
        if extra := sorted(set(have) - set(want)):
            raise ModelError(f"{item.weights}: tensor {extra[0]!r} is not in the first ingredient's model "
                             f"({len(extra)} such); ingredients must share its architecture")


def greedy(order: list[int], score: Callable[[list[int]], float]) -> tuple[list[int], float]:
    """Wortsman's greedy soup over ingredients already sorted best first: each next one joins the soup
    if the soup scores no worse with it. Returns (kept indices, the kept soup's score)."""
    kept = order[:1]
    best = score(kept)
    for i in order[1:]:
        if (s := score(kept + [i])) >= best:
            kept, best = kept + [i], s
    return kept, best


def make_soup(cfg: SoupConfig, *, log: Callable[[str], None] = print) -> dict:
    """Write the soup to cfg.out; returns what soup.json records."""
    if not cfg.models:
        raise ModelError("a soup needs at least one ingredient")
    first = Path(cfg.models[0]).expanduser()
    if not first.is_dir():
        raise ModelError(f"{cfg.models[0]}: the first ingredient must be a model dir (its config.json describes the soup)")
    model = load_classifier(str(first))
    items = [ingredient(s) for s in cfg.models]
    check_compatible(model, items)

    scores: list[float | None] = [None] * len(items)
    if cfg.data is None:
        kept = list(range(len(items)))
        soup_acc = None
    else:
        from pcv.export import labelled_texts, torch_logits

        texts, labels = labelled_texts(model, cfg.data, text_field=cfg.text_field, label_field=cfg.label_field,
                                       limit=cfg.limit)
        max_length = int(model.config.max_position_embeddings)
        done: dict[tuple[int, ...], float] = {}  # greedy starts from the best single one, already scored

        def score(idx: list[int]) -> float:
            key = tuple(sorted(idx))
            if key not in done:
                model.load_state_dict(average_weights([items[i].weights for i in idx]))
                logits, _ = torch_logits(model, texts, max_length=max_length, batch_size=cfg.batch_size)
                done[key] = float((logits.argmax(1) == labels).mean())
                log(f"soup of {[i + 1 for i in idx]}: accuracy {done[key]:.4f} on {len(texts):,} texts of {cfg.data}")
            return done[key]

        for i in range(len(items)):
            scores[i] = score([i])
        order = sorted(range(len(items)), key=lambda i: -scores[i])  # stable: ties keep the given order
        kept, soup_acc = greedy(order, score)

    weights = average_weights([items[i].weights for i in kept])
    model.load_state_dict(weights)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out)
    _verify_written(out / "model.safetensors", weights)
    record = {
        "method": "uniform" if cfg.data is None else "greedy",
        "data": cfg.data, "texts": None if cfg.data is None else len(texts),
        "soup_accuracy": soup_acc,
        "ingredients": [{"source": it.source, "sha256": it.sha256, "accuracy": scores[i], "kept": i in kept}
                        for i, it in enumerate(items)],
    }
    (out / "soup.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _verify_written(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Read the written file back: every tensor it holds is the soup's, bit for bit."""
    from safetensors.torch import load_file

    back = load_file(path)
    for k, v in back.items():
        if k not in weights or not torch.equal(v, weights[k]):
            raise ModelError(f"{path}: tensor {k!r} does not read back as the soup's mean; the file is not trustworthy")
    if missing := sorted(set(weights) - set(back)):
        raise ModelError(f"{path}: tensor {missing[0]!r} was not written ({len(missing)} missing)")


__all__ = ["SoupConfig", "make_soup", "greedy", "ingredient", "check_compatible"]
