"""Shared fixtures: the real Gemma tokenizer (from the embedded GGUF) and tiny random Gemma3 models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KORMEDQA_TEST_CACHE", REPO / ".cache" / "test"))
SPEC = REPO.parent / "shared" / "spec" / "SEED_SPEC.md"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    from kormedqa.default_model import fetch_tokenizer

    return fetch_tokenizer(CACHE / "gemma3-tokenizer")


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from kormedqa.modeling import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir) -> Path:
    from kormedqa.default_model import build_tiny_model

    out = CACHE / "tiny-gemma3"
    if not (out / "config.json").exists():
        build_tiny_model(out, tokenizer_dir)
    return out


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from kormedqa.hardware import choose
    from kormedqa.modeling import load_model

    return load_model(str(tiny_model_dir), choose("cpu", "fp32"))


def _standin(tokenizer_dir, layout: str) -> Path:
    """The stand-in of `layout` in the test cache, built once."""
    from kormedqa.default_model import build_standin

    out = CACHE / f"standin-{layout}"
    if not (out / "config.json").exists():
        build_standin(out, tokenizer_dir, layout=layout)
    return out


@pytest.fixture(scope="session")
def medgemma_standin(tokenizer_dir) -> Path:
    """google/medgemma-4b-it's layout (multimodal Gemma3ForConditionalGeneration, hub names, processor), tiny."""
    return _standin(tokenizer_dir, "multimodal")


@pytest.fixture(scope="session")
def medgemma_text_standin(tokenizer_dir) -> Path:
    """google/medgemma-27b-text-it's layout (text-only Gemma3ForCausalLM, bf16, two shards), tiny."""
    return _standin(tokenizer_dir, "text")


@pytest.fixture(scope="session", params=["multimodal", "text"])
def standin(request, medgemma_standin, medgemma_text_standin) -> Path:
    """Each stand-in layout in turn."""
    return medgemma_standin if request.param == "multimodal" else medgemma_text_standin
