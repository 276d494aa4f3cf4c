"""ONNX model resolution, metadata and execution providers (a table, never a silent fallback)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import ModelError, ProviderError
from .modelfile import check_onnx_file, scan_onnx
from .tokenizer import DEFAULT_MAX_LENGTH

# pcv name -> ONNX Runtime provider. "auto" tries AUTO_ORDER and says which it took.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# TensorRT is never picked by auto: its first run builds engines for minutes. Ask for it.
AUTO_ORDER = ("cuda", "cpu")
# What auto picks for a variant (from its metadata): int8 kernels are CPU kernels, a tensorrt
# variant wants TensorRT. Variants not listed follow AUTO_ORDER.
VARIANT_AUTO = {"int8": ("cpu",), "int8-static": ("cpu",), "tensorrt": ("tensorrt", "cuda", "cpu")}


@dataclass(frozen=True)
class Engine:
    """How pcv-batch drives a provider: texts per session.run, intra-op threads per run, and
    session.run calls in flight at once (None = one per core)."""

    batch_size: int
    threads: int | None  # None = onnxruntime's default (all cores)
    concurrent_runs: int | None


# Measured with pcv-bench --engine --engine-repeats 3 on the bundled model (2-core CPU, 200 real
# reviews, bench/results/engine): one single-threaded run per core at batch 1 gave 97 ex/s in fp32
# against 87 for all cores per run at batch 4 — no padding at all, no intra-op synchronisation, and
# the latent stack's cost per example does not shrink with batching. GPUs want large batches in one stream.
ENGINES: dict[str, Engine] = {
    "cpu": Engine(batch_size=1, threads=1, concurrent_runs=None),
    "cuda": Engine(batch_size=64, threads=None, concurrent_runs=1),
    "tensorrt": Engine(batch_size=64, threads=None, concurrent_runs=1),
}
# Below this file size a model is so cheap per example that session.run's fixed cost dominates at
# batch 1. pcv-bench --engine --engine-repeats 2 --batch-sizes 1,16 (1 thread x 2 runs, best of 2,
# 200 real reviews): a 0.44 MiB Perceiver 3,700 ex/s at batch 1 vs 6,539 at batch 16; a 2.8 MiB one
# 768 vs 630. Small models on the CPU get this batch size instead.
CPU_SMALL_MODEL_BYTES, CPU_SMALL_MODEL_BATCH = 2**20, 16
DEFAULT_MODEL = "imdb-perceiver"
MAX_ONNX_BYTES = 8 * 2**30  # refuse absurd files before onnxruntime tries to map them


def default_model_path() -> Path:
    """The bundled model (package data of pcv.models), found from any working directory."""
    return Path(str(resources.files("pcv.models") / DEFAULT_MODEL / "model.onnx"))


def resolve_model(model: str | None) -> Path:
    if model is None:
        path = default_model_path()
        if not path.is_file():
            raise ModelError(f"the bundled model is missing at {path}; reinstall pcv or pass --model")
        return path
    path = Path(model).expanduser()
    if path.is_dir():
        onnx_files = sorted(path.glob("*.onnx"))
        if (path / "model.onnx").is_file():
            return path / "model.onnx"
        if len(onnx_files) == 1:
            return onnx_files[0]
        if not onnx_files:
            raise ModelError(f"{path}: no .onnx file in this dir; export one with: pcv-export {path} {path}/model.onnx")
        raise ModelError(f"{path}: several .onnx files ({', '.join(p.name for p in onnx_files)}); pass one of them")
    if not path.is_file():
        raise ModelError(f"{model}: no such model file or dir")
    return path


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    id2label: dict[int, str]
    max_length: int
    variant: str
    input_names: tuple[str, str]  # (ids, mask) as named in the graph
    defaults: tuple[str, ...] = field(default=())  # metadata that was missing and defaulted
    trt_options: dict | None = None  # tensorrt variants: provider options with shape profiles


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    provider: str = "auto"  # auto | cpu | cuda | tensorrt
    threads: int | None = None  # intra-op threads; None = onnxruntime's choice (all cores)
    spinning: bool | None = None  # intra-op threads busy-wait between ops; None = onnxruntime's default (on)
    trt_cache_dir: str | None = None  # TensorRT engine cache
    # Bind inputs/outputs to the provider's device (OrtValues) instead of letting run() copy them:
    # None = on for cuda/tensorrt, off for cpu (where there is no copy to save).
    io_binding: bool | None = None
    # What to do when onnxruntime opens the session on another provider than the one asked for
    # (a CUDA build whose libraries do not match): False = ProviderError; True = go on with the one
    # that ran and say so on stderr (provider "auto" asks for this, never an explicit provider).
    allow_downgrade: bool = False


def available_providers() -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [name for name, ep in PROVIDERS.items() if ep in have]


def pick_provider(requested: str, variant: str | None = None) -> str:
    """Return the pcv provider name to use; an explicit provider that is missing is an error."""
    have = available_providers()
    if requested == "auto":
        for name in VARIANT_AUTO.get(variant or "", AUTO_ORDER):
            if name in have:
                return name
        raise ProviderError(f"no usable execution provider (available: {have})")
    if requested not in PROVIDERS:
        raise ProviderError(f"provider {requested!r} is unknown: use auto, {', '.join(PROVIDERS)}")
    if requested not in have:
        hint = " (install onnxruntime-gpu: pip install 'pcv[gpu]')" if requested != "cpu" else ""
        raise ProviderError(f"provider {requested!r} is not available here (available: {', '.join(have)}){hint}")
    return requested


def plan_engine(model: Path, provider: str, *, batch_size: int | None = None, threads: int | None = None,
                concurrent_runs: int | None = None) -> tuple[str, Engine]:
    """The provider pcv-batch will use for this model and how to drive it: explicit values win,
    the rest comes from ENGINES. Threads given without concurrent runs means one run at a time."""
    try:
        variant = scan_onnx(model).metadata.get("pcv.variant")
    except OSError as e:
        raise ModelError(f"{model}: cannot read the model ({e})") from e
    name = pick_provider(provider, variant)
    base = ENGINES[name]
    if batch_size is None and name == "cpu" and model.stat().st_size < CPU_SMALL_MODEL_BYTES:
        batch_size = CPU_SMALL_MODEL_BATCH
    runs = concurrent_runs or (1 if threads else base.concurrent_runs) or default_threads()
    return name, Engine(batch_size=batch_size or base.batch_size, threads=threads or base.threads, concurrent_runs=runs)


INT8_BITS_KEY = "pcv.int8_weight_bits"  # metadata of the int8 variant: 8 (full range) or 7 (reduce_range)
_WARNED: set[str] = set()  # models already warned about in this process (pcv-bench, pcv-check and Ray actors open several sessions)


def warn_int8_range(path: Path, meta: dict[str, str], provider: str) -> None:
    """Warn (stderr, once per model and process) about an int8 model with full-range weights on a
    CPU whose int8 sums saturate."""
    from .cpu import int8_saturates

    if provider != "cpu" or meta.get(INT8_BITS_KEY) != "8" or str(path) in _WARNED or not int8_saturates():
        return
    _WARNED.add(str(path))
    print(f"pcv: {path} has full-range 8-bit int8 weights, made for CPUs with VNNI; this CPU has none, and ONNX "
           f"Runtime's int8 sums can saturate here (logits move more than with 7-bit weights): for this CPU, export "
           f"with pcv-export --variant int8 --int8-weights 7bit", file=sys.stderr)


class OnnxClassifier:
    """An onnxruntime session over a pcv ONNX model: logits for tokenized batches.

    >>> clf = OnnxClassifier(default_model_path())  # doctest: +SKIP
    >>> clf.logits(ids, mask).shape  # doctest: +SKIP
    (8, 2)
    """

    def __init__(self, path: str | Path, cfg: SessionConfig = SessionConfig()) -> None:
        path = Path(path)
        try:
            meta = check_onnx_file(path, max_bytes=MAX_ONNX_BYTES)  # untrusted: no path escapes, not cut short
        except OSError as e:
            raise ModelError(f"{path}: cannot read the model ({e})") from e
        self.provider = pick_provider(cfg.provider, meta.get("pcv.variant"))  # auto: int8 -> cpu, ...
        warn_int8_range(path, meta, self.provider)
        trt = json.loads(meta["pcv.trt_options"]) if "pcv.trt_options" in meta else None
        self.session = self._open(path, cfg, trt)
        self._check_provider(path, cfg)
        self.info = _read_info(path, self.session, meta, trt)
        self.io_binding = cfg.io_binding if cfg.io_binding is not None else self.provider in ("cuda", "tensorrt")
        self._device = "cuda" if self.provider in ("cuda", "tensorrt") else "cpu"

    def _open(self, path: Path, cfg: SessionConfig, trt_options: dict | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if cfg.threads:
            opts.intra_op_num_threads = cfg.threads
        if cfg.spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.spinning else "0")
        opts.log_severity_level = 3
        providers: list = [PROVIDERS[self.provider]]
        if self.provider == "tensorrt":
            trt = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cfg.trt_cache_dir or str(path.parent / "trt_cache")}
            if trt_options:
                trt = {**trt_options, **({"trt_engine_cache_path": cfg.trt_cache_dir} if cfg.trt_cache_dir else {})}
            providers = [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            with _captured_stderr() as said:
                session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelError(f"{path}: onnxruntime cannot load this model: {str(e).splitlines()[0][:300]}") from e
        self._ort_said = said
        return session

    def _check_provider(self, path: Path, cfg: SessionConfig) -> None:
        """What ran is what was asked for, or an error; never a provider swapped in silently."""
        got = self.session.get_providers()
        want = PROVIDERS[self.provider]
        if got and got[0] == want:
            return
        reason = _ort_reason(self._ort_said) or "onnxruntime gave no reason"
        ran = next((name for name, ep in PROVIDERS.items() if got and ep == got[0]), got[0] if got else "none")
        if not cfg.allow_downgrade or ran not in PROVIDERS:
            raise ProviderError(f"provider {self.provider!r} was asked for, but onnxruntime opened the session on "
                                f"{got}: {reason}")
        print(f"pcv: provider {self.provider} did not start ({reason}); running on {ran}", file=sys.stderr)
        self.provider = ran

    def logits(self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        ids_name, mask_name = self.info.input_names
        if not self.io_binding:
            out = self.session.run(None, {ids_name: input_ids, mask_name: attention_mask})[0]  # (B, C)
            return check_logits(self.info.path, out, len(input_ids), len(self.info.id2label))
        import onnxruntime as ort

        # One host->device copy per input, the output allocated on the device and copied back once.
        binding = self.session.io_binding()
        for name, arr in ((ids_name, input_ids), (mask_name, attention_mask)):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self._device, 0))
        binding.bind_output(self.session.get_outputs()[0].name, self._device)
        self.session.run_with_iobinding(binding)
        return check_logits(self.info.path, binding.copy_outputs_to_cpu()[0], len(input_ids), len(self.info.id2label))


def _read_info(path: Path, session, meta: dict[str, str], trt: dict | None) -> ModelInfo:
    """Inputs from the open session; labels and limits from the metadata the load check read."""
    inputs = session.get_inputs()
    if len(inputs) != 2:
        raise ModelError(f"{path}: expected 2 inputs (input_ids, attention_mask), got {[i.name for i in inputs]}")
    for i in inputs:
        if i.type != "tensor(int64)":
            raise ModelError(f"{path}: input {i.name!r} is {i.type}; pcv feeds int64 token ids and mask "
                             f"(re-export the model with pcv-export)")
    names = [i.name for i in inputs]
    # Older exports call the ids input "inputs": take the one that is not the mask.
    mask_name = next((n for n in names if "mask" in n), names[1])
    ids_name = next(n for n in names if n != mask_name)
    defaults: list[str] = []
    out = session.get_outputs()[0]
    if out.type != "tensor(float)":
        raise ModelError(f"{path}: output {out.name!r} is {out.type}; pcv reads float32 logits (batch, labels) "
                         f"(fp16 variants keep float32 outputs: build them with pcv-export --variant fp16)")
    if out.shape is not None and len(out.shape) != 2:
        raise ModelError(f"{path}: output {out.name!r} has shape {out.shape}; pcv reads logits of shape (batch, labels)")
    n_out = out.shape[-1] if out.shape else None
    try:
        id2label = {int(k): v for k, v in json.loads(meta["pcv.id2label"]).items()}
    except KeyError:
        n = n_out if isinstance(n_out, int) else 2
        id2label = {i: f"LABEL_{i}" for i in range(n)}
        defaults.append(f"labels {list(id2label.values())}")
    except (ValueError, AttributeError, TypeError) as e:
        raise ModelError(f"{path}: metadata pcv.id2label is not a JSON object of id -> name ({e})") from e
    check_labels(path, id2label, n_out)
    try:
        max_length = int(meta.get("pcv.max_length", DEFAULT_MAX_LENGTH))
    except ValueError as e:
        raise ModelError(f"{path}: metadata pcv.max_length is not an integer") from e
    if "pcv.max_length" not in meta:
        defaults.append(f"max_length {DEFAULT_MAX_LENGTH}")
    if not 2 < max_length <= 1 << 20:
        raise ModelError(f"{path}: metadata pcv.max_length={max_length} is out of range")
    return ModelInfo(path, id2label, max_length, meta.get("pcv.variant", "unknown"), (ids_name, mask_name), tuple(defaults), trt)


def check_labels(path: Path, id2label: dict[int, str], n_out: int | str | None) -> None:
    """The label table must name each output column once: ids 0..C-1, C >= 2, distinct names."""
    c = len(id2label)
    if isinstance(n_out, int) and n_out == 1 or c == 1:
        raise ModelError(f"{path}: a single-logit head (num_labels=1) is a regression or sigmoid head; pcv classifies "
                         f"with one logit per label: train or convert the model with num_labels >= 2")
    if sorted(id2label) != list(range(c)):
        raise ModelError(f"{path}: metadata pcv.id2label has ids {sorted(id2label)}; they must be exactly 0..{c - 1}")
    names = list(id2label.values())
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != c:
        raise ModelError(f"{path}: metadata pcv.id2label names {names}: each label needs its own non-empty name")
    if c < 2:
        raise ModelError(f"{path}: metadata pcv.id2label has {c} labels; a classifier needs at least 2")
    if isinstance(n_out, int) and n_out != c:
        raise ModelError(f"{path}: the model gives {n_out} logits per text but its metadata names {c} labels "
                         f"({names}); re-export it so that pcv.id2label matches the classifier head")


def check_logits(path: Path, logits: npt.NDArray, batch: int, labels: int) -> npt.NDArray[np.float32]:
    """What the session returned must be finite float logits of shape (batch, labels): a model error otherwise."""
    if logits.shape != (batch, labels) or logits.dtype != np.float32:
        raise ModelError(f"{path}: the model returned {logits.dtype} logits of shape {logits.shape} for a batch of "
                         f"{batch}; expected float32 ({batch}, {labels})")
    if not np.isfinite(logits).all():
        row = int(np.flatnonzero(~np.isfinite(logits).all(axis=1))[0])
        raise ModelError(f"{path}: the model returned non-finite logits {logits[row].tolist()} (row {row} of a batch "
                         f"of {batch}); nothing of that batch was written; the model or its variant is broken")
    return logits


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """What onnxruntime writes while a session opens — its C++ log on fd 2 and Python warnings —
    kept to explain a provider that did not start; passed on to stderr afterwards."""
    said: list[str] = []
    with tempfile.TemporaryFile() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said += tmp.read().decode("utf-8", "replace").splitlines()
            said += [str(w.message) for w in caught]
    for line in said:
        print(line, file=sys.stderr)


def _ort_reason(lines: list[str]) -> str:
    for line in lines:
        if "Failed to" in line or "not in available provider" in line or "Error" in line:
            return line.split("] ", 1)[-1].strip()[:300]
    return ""


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
