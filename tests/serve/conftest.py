"""Fixtures: tiny plural / SteerLM model directories and a real `cmpo serve` process on a free loopback port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._support import ServerProcess, build_plural


@pytest.fixture(scope="session")
def plural_dir(tmp_path_factory) -> Path:
    return build_plural(tmp_path_factory.mktemp("plural") / "model", adapter="shared")


@pytest.fixture(scope="session")
def plural_adapter_dir(tmp_path_factory) -> Path:
    return build_plural(tmp_path_factory.mktemp("plural-adapters") / "model", adapter="plural")


@pytest.fixture(scope="session")
def steerlm_dir(tmp_path_factory) -> Path:
    """A SteerLM-ACM-style directory: a plain HF checkpoint + cmpo_model.json kind steerlm-acm."""
    from cmpo.models.loading import load_model

    model, tok = load_model("tiny-random")
    out = tmp_path_factory.mktemp("steerlm") / "acm"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "cmpo_model.json").write_text(json.dumps({
        "kind": "steerlm-acm", "template": "chat", "base_model": "tiny-random",
        "attributes": ["helpfulness", "humor"], "attribute_prefix": "",
    }))
    return out


@pytest.fixture(scope="session")
def server(plural_dir):
    """Open server; batches wait 150 ms for company so concurrent requests reliably share a batch."""
    srv = ServerProcess(plural_dir, "--batch-wait-ms", "150", "--max-batch", "8", "--max-prompt-tokens", "96",
                        "--max-tokens-cap", "48", "--max-body-bytes", "20000", env={"CMPO_API_KEY": ""})
    yield srv
    srv.stop()
