"""The text encoder: offline loading of the packaged model, and the three backends agreeing."""

from __future__ import annotations

import os
from itertools import product

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from kairos.config import Settings  # noqa: E402
from kairos.text import BACKENDS, TextEncoder, load_encoder  # noqa: E402

SENTENCES = [
    f"{colour} {thing} for {use}"
    for colour, thing, use in product(
        ["red", "waterproof", "stainless steel", "compact", "cheap"],
        ["hiking boots", "lab gloves", "coffee grinder", "drill bits", "notebook"],
        ["the weekend", "professionals"],
    )
]


@pytest.fixture(scope="module", params=BACKENDS)
def encoder(request: pytest.FixtureRequest) -> TextEncoder:
    return load_encoder(backend=request.param)


def test_default_loads_offline_from_the_packaged_model() -> None:
    default = load_encoder()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert default.dim == 384
    assert default.model_id.startswith("all-MiniLM-L6-v2@")
    assert default.model_id.endswith("/" + Settings().text_backend)
    assert load_encoder("all-MiniLM-L6-v2") is default  # one instance per process


def test_rows_are_normalised_and_deterministic(encoder: TextEncoder) -> None:
    first = encoder.encode(SENTENCES[:20], batch_size=8)
    assert first.shape == (20, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, encoder.encode(SENTENCES[:20], batch_size=8))


def test_rows_keep_input_order(encoder: TextEncoder) -> None:
    texts = ["espresso coffee beans", "a much longer sentence about trail running shoes", "gloves"]
    together = encoder.encode(texts)
    alone = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_similar_sentences_are_closer(encoder: TextEncoder) -> None:
    shoes, sneakers, coffee = encoder.encode(
        ["trail running shoes", "lightweight running sneakers", "espresso coffee beans"]
    )
    assert shoes @ sneakers > shoes @ coffee + 0.2
    assert shoes @ sneakers > sneakers @ coffee + 0.2


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_backends_agree_with_torch(backend: str) -> None:
    reference = load_encoder(backend="torch").encode(SENTENCES)
    cosine = (load_encoder(backend=backend).encode(SENTENCES) * reference).sum(axis=1)
    assert cosine.mean() > 0.98 and cosine.min() > 0.95


def test_model_id_names_the_backend() -> None:
    ids = {load_encoder(backend=b).model_id for b in BACKENDS}
    assert len(ids) == len(BACKENDS)
    assert all(i.startswith("all-MiniLM-L6-v2@") for i in ids)


def test_export_is_cached_without_leftovers() -> None:
    load_encoder(backend="onnx-int8")
    cache = Settings().text_cache_dir
    assert len(list(cache.glob("*-onnx-int8-v*.onnx"))) >= 1
    assert not list(cache.glob(".*.tmp"))


def test_empty_input_and_bad_arguments(encoder: TextEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("one string")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        load_encoder(backend="tensorrt")
