"""Model loading: cache location, the tiny model, and the real built-in default (integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmpo.models import loading


def test_cache_dir_respects_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("CMPO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_dir() == tmp_path / "xdg" / "cmpo"
    monkeypatch.setenv("CMPO_CACHE", str(tmp_path / "mine"))
    assert loading.cache_dir() == tmp_path / "mine"


def test_unknown_names_pass_through():
    assert loading.resolve_model_path("org/some-model") == "org/some-model"


def test_tiny_model_is_built_atomically_and_deterministically(monkeypatch, tmp_path):
    monkeypatch.setenv("CMPO_CACHE", str(tmp_path))
    path = Path(loading.resolve_model_path("tiny-random"))
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]  # no leftovers
    m1, tok = loading.load_model(str(path))
    m2, _ = loading.load_model("tiny-random")
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p1, p2), n1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is True


def test_weights_only_from_safetensors(tiny_model_dir, tmp_path):
    import shutil

    bad = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").unlink()
    torch.save({}, bad / "pytorch_model.bin")
    with pytest.raises(OSError):  # transformers refuses: no safetensors file, and .bin is not allowed
        loading.load_model(str(bad))


@pytest.mark.integration
def test_default_model_generates_greedily(smollm_dir):
    from cmpo.data.templates import PromptTemplate

    model, tok = loading.load_model("smollm2-135m")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (576, 30, 49152)
    assert Path(smollm_dir, "model.safetensors").exists()
    template = PromptTemplate.resolve("auto", tok)
    ids, _ = template.encode("What is the capital of France? Answer in one word.")
    out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in text
