"""Shared fixtures: the model cache, the tiny random model, the real default model, the shared datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One cache for the whole run (the real default model is converted once, ~25 s, then reused).
os.environ.setdefault("CMPO_CACHE", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cmpo"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("CMPO_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"shared datasets not found at {path} (set CMPO_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    from cmpo.models.loading import resolve_model_path

    return resolve_model_path("tiny-random")


@pytest.fixture(scope="session")
def smollm_dir() -> str:
    from cmpo.models.loading import resolve_model_path

    return resolve_model_path("smollm2-135m")


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from cmpo.models.loading import load_model

    return load_model(tiny_model_dir)
