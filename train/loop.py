"""What pcv-train and pcv-pretrain share: the learning-rate schedule and resumable checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def lr_factor(step: int, seconds: float, *, warmup: int, total: int, max_minutes: float | None,
              warmup_time: float = 0.0) -> float:
    """Linear warm-up, then cosine to 10 %; with a time budget the cosine follows the clock, so a
    time-boxed run still ends on a low learning rate. `warmup_time` (a share of the budget) warms up
    by the clock instead of by steps, for time-boxed runs whose step count is not known ahead."""
    if max_minutes and warmup_time > 0:
        t = seconds / (max_minutes * 60)
        if t < warmup_time:
            return max(t / warmup_time, 1.0 / max(1, total))
        p = max((t - warmup_time) / (1 - warmup_time), step / max(1, total))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    if max_minutes:
        p = max(p, seconds / (max_minutes * 60))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def uses_bf16(device: torch.device, requested: bool) -> bool:
    """bf16 autocast runs on CUDA, and on CPUs with bf16 instructions (AVX512-BF16/AMX: ~15 % faster
    steps for the bundled model's size on this project's CPU); elsewhere emulated bf16 would be
    slower than fp32, so the trainers say so and train in fp32."""
    if device.type == "cpu":
        return requested and _cpu_has_bf16()
    return requested and device.type == "cuda"


def bf16_autocast(device: torch.device, requested: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, requested))


def say_precision(device: torch.device, requested: bool) -> None:
    if requested and not uses_bf16(device, requested):
        print(f"bf16 autocast is not available on this {device.type}: training in fp32 (--no-bf16 asks for fp32 directly)",
              flush=True)


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def group_by_length(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator, *,
                    megabatch: int = 50) -> np.ndarray:
    """Reorder a shuffled `order` so each batch (consecutive `batch_size` slice) holds texts of
    similar length: chunks of `megabatch` batches are sorted by length, cut into batches, and the
    full batches shuffled. Padding to the batch's longest text then costs little (transformers'
    group_by_length does the same); the batches stay random draws of the data.
    """
    chunk = batch_size * megabatch
    parts = [c[np.argsort(-lengths[c], kind="stable")] for c in np.split(order, range(chunk, len(order), chunk))]
    grouped = np.concatenate(parts) if parts else order
    n_full = len(grouped) // batch_size
    batches = grouped[: n_full * batch_size].reshape(n_full, batch_size)[rng.permutation(n_full)]
    return np.concatenate([batches.reshape(-1), grouped[n_full * batch_size :]])  # a short last batch stays last


@dataclass
class LoopState:
    """The step loop's progress, saved in checkpoint/state.json: a resumed run goes on from it."""

    step: int = 0
    best_acc: float = -1.0  # the best evaluation so far (the model saved to the output dir)
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    train_seconds: float = 0.0  # training time so far, across resumes (the --max-minutes budget)
    last_loss: float | None = None


class Checkpoint:
    """checkpoint/state.pt (tensors only, loaded with weights_only=True) + state.json (progress).
    With `keep` > 0, the weights of `kept` at the last `keep` saves are also kept, as
    recent/step-N.safetensors, for averaging at the end of a run (average_weights)."""

    def __init__(self, folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, *, keep: int = 0,
                 kept: torch.nn.Module | None = None) -> None:
        self.folder, self.model, self.opt = folder, model, opt
        self.keep, self.kept = keep, kept if kept is not None else model

    def load(self, device: torch.device) -> LoopState | None:
        """Restore model and optimizer; returns the saved progress, or None for a fresh start."""
        if not (self.folder / "state.pt").is_file():
            return None
        ck = torch.load(self.folder / "state.pt", map_location=device, weights_only=True)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optim"])
        saved = json.loads((self.folder / "state.json").read_text())
        state = LoopState(**{f.name: saved[f.name] for f in dataclasses.fields(LoopState) if f.name in saved})
        print(f"resumed from {self.folder} at step {state.step}", flush=True)
        return state

    def save(self, state: LoopState | dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "state.pt.tmp"
        torch.save({"model": self.model.state_dict(), "optim": self.opt.state_dict()}, tmp)
        tmp.replace(self.folder / "state.pt")  # a kill mid-save leaves the previous checkpoint whole
        progress = dataclasses.asdict(state) if isinstance(state, LoopState) else state
        (self.folder / "state.json").write_text(json.dumps(progress))
        if self.keep > 0:
            from safetensors.torch import save_file

            recent = self.folder / "recent"
            recent.mkdir(exist_ok=True)
            weights = {k: v.detach().cpu().contiguous() for k, v in self.kept.state_dict().items()}
            save_file(weights, recent / "step.tmp")
            (recent / "step.tmp").replace(recent / f"step-{progress['step']:08d}.safetensors")
            for old in self.recent()[: -self.keep]:
                old.unlink()

    def recent(self) -> list[Path]:
        """The kept weights, oldest first."""
        return sorted((self.folder / "recent").glob("step-*.safetensors"))


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weights in these safetensors files (checkpoint averaging:
    the mean of the last checkpoints of a run often generalises better than any one of them)."""
    from safetensors.torch import load_file

    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in paths:
        for k, v in load_file(path).items():
            total[k] = total[k] + v.double() if k in total else v.double()
            dtypes.setdefault(k, v.dtype)
    return {k: (v / len(paths)).to(dtypes[k]) for k, v in total.items()}


@dataclass
class Run:
    """What the step loop runs with: AdamW, the checkpoint, the progress and the schedule."""

    opt: torch.optim.Optimizer
    ckpt: Checkpoint
    state: LoopState
    total_steps: int
    steps_per_epoch: int
    lr_at: Callable[[int, float], float]  # (step, training seconds) -> learning rate
    warmup_steps: int = 0  # 0 with a warm-up by the clock
    max_minutes: float | None = None


def param_groups(model: torch.nn.Module, lr_scales: dict[torch.nn.Module, float] | None) -> list[dict]:
    """One optimizer group, or one per submodule in lr_scales (its parameters at that multiple of the
    learning rate) after one for the rest; the groups are the same on every run, so a checkpoint resumes."""
    scaled = [({id(p) for p in m.parameters()}, s) for m, s in (lr_scales or {}).items()]
    groups = [{"params": [p for p in model.parameters() if id(p) in ids], "lr_scale": s} for ids, s in scaled]
    rest = [p for p in model.parameters() if not any(id(p) in ids for ids, _ in scaled)]
    return [{"params": rest}, *(g for g in groups if g["params"])]


def start(model: torch.nn.Module, *, pool_size: int, batch_size: int, epochs: float, lr: float, weight_decay: float,
          warmup: int | None, max_minutes: float | None, ckpt_dir: Path, device: torch.device, keep: int = 0,
          kept: torch.nn.Module | None = None, warmup_fraction: float = 0.05,
          lr_scales: dict[torch.nn.Module, float] | None = None) -> Run:
    """AdamW, the step budget, the checkpoint (resumed if there is one) and the learning-rate schedule.
    `warmup` None: warmup_fraction of the planned steps, or of the time budget when there is one."""
    steps_per_epoch = math.ceil(pool_size / batch_size)
    total_steps = max(1, int(epochs * steps_per_epoch))
    opt = torch.optim.AdamW(param_groups(model, lr_scales), lr=lr, weight_decay=weight_decay)
    ckpt = Checkpoint(ckpt_dir, model, opt, keep=keep, kept=kept)
    state = ckpt.load(device) or LoopState()
    by_clock = warmup is None and bool(max_minutes)
    steps = 0 if by_clock else (warmup if warmup is not None else max(1, round(warmup_fraction * total_steps)))

    def lr_at(step: int, seconds: float) -> float:
        return lr * lr_factor(step, seconds, warmup=steps, total=total_steps, max_minutes=max_minutes,
                              warmup_time=warmup_fraction if by_clock else 0.0)

    return Run(opt, ckpt, state, total_steps, steps_per_epoch, lr_at, steps, max_minutes)


def save_model(model, out: Path) -> None:
    """save_pretrained, with the files readable as the umask allows (safetensors writes its file
    0600, so a model dir copied to a server that runs as another user could not be read)."""
    model.save_pretrained(out, safe_serialization=True)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "config.json"):
        if (out / name).is_file():
            os.chmod(out / name, 0o666 & ~mask)


def budget_spent(state: LoopState, max_minutes: float | None) -> bool:
    """The time budget is used up: the step loop takes no further step."""
    return bool(max_minutes and state.train_seconds > max_minutes * 60)


def finished(state: LoopState, total_steps: int, max_minutes: float | None) -> bool:
    """A run is done when its steps are, or when its time budget is spent."""
    return state.step >= total_steps or budget_spent(state, max_minutes)


def record_eval(state: LoopState, entry: dict, acc: float, model, out: Path) -> None:
    """Log one evaluation into the run's history; the best model so far is saved to `out`."""
    state.history.append(entry)
    tqdm.write(json.dumps(entry))
    if acc > state.best_acc:
        state.best_acc = acc
        save_model(model, Path(out))


def run_steps(run: Run, *, model: torch.nn.Module, loss_of: Callable[[np.ndarray, int], torch.Tensor],
              run_eval: Callable[[], None], pool_size: int, batch_size: int, order_seed: int, eval_every: int,
              checkpoint_every: int, max_minutes: float | None, desc: str, lengths: np.ndarray | None = None) -> None:
    """The step loop both trainers run: epochs of a seeded permutation (so a resumed run picks up
    the same batches; with `lengths`, grouped by length), AdamW step with clipping, evaluation,
    checkpoints and a wall-clock budget.
    `loss_of(batch indices, step)` returns the batch's loss; run.state.step / train_seconds advance."""
    state, opt = run.state, run.opt
    if max_minutes:  # the clock ends the run: the bar (and its ETA) follows the budget, steps in the postfix
        budget = round(max_minutes * 60)
        bar = tqdm(total=budget, initial=min(budget, round(state.train_seconds)), desc=desc, unit="s",
                   dynamic_ncols=True, mininterval=5, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")
    else:
        bar = tqdm(total=run.total_steps, initial=state.step, desc=desc, unit="step", dynamic_ncols=True, mininterval=5)
    t_start = time.time() - state.train_seconds
    stop = False
    while state.step < run.total_steps and not stop:
        epoch = state.step // run.steps_per_epoch
        rng = np.random.default_rng(order_seed + epoch)
        order = rng.permutation(pool_size)
        if lengths is not None:
            order = group_by_length(order, lengths, batch_size, rng)
        for b in range(state.step % run.steps_per_epoch, run.steps_per_epoch):
            if budget_spent(state, max_minutes):  # before the step: a spent run takes none
                tqdm.write(f"time budget of {max_minutes} min reached at step {state.step}")
                stop = True
                break
            loss = loss_of(order[b * batch_size : (b + 1) * batch_size], state.step)
            for group in opt.param_groups:
                group["lr"] = run.lr_at(state.step, state.train_seconds) * group.get("lr_scale", 1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            state.step += 1
            state.train_seconds = time.time() - t_start
            state.last_loss = round(float(loss.item()), 4)
            if max_minutes:
                bar.update(min(budget, state.train_seconds) - bar.n)
                bar.set_postfix(step=state.step, loss=f"{state.last_loss:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}",
                                refresh=False)
            else:
                bar.update(1)
                bar.set_postfix(loss=f"{state.last_loss:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
            if state.step % eval_every == 0:
                run_eval()
            if state.step % checkpoint_every == 0:
                run.ckpt.save(state)
            if state.step >= run.total_steps:
                break
    bar.close()
    if not state.history or state.history[-1]["step"] != state.step:
        run_eval()
    run.ckpt.save(state)
