"""Shared helpers for the benchmark scripts (not a library module; nothing here is imported by ``cmpo``).

Models are named like everywhere in cmpo (``smollm2-135m``, ``tiny-random``, a path) or ``random-llama:SIZE``
(SIZE in :data:`RANDOM_LLAMA`): a random-initialised Llama built from a config, for machines that cannot
download anything (the GPU image). Nothing here imports ``trl`` or ``datasets``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import sys
import threading
import time
from contextlib import contextmanager

import torch

# name -> LlamaConfig kwargs. "1b" is TinyLlama-1.1B's shape; "tiny" matches cmpo's tiny-random trunk.
RANDOM_LLAMA = {
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}


def add_common_arguments(ap) -> None:
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch CPU threads (default: all cores; use 1 on a shared, busy machine)")
    ap.add_argument("--device", default="auto", help="cpu | cuda | auto")
    ap.add_argument("--seed", type=int, default=0)


def setup(args) -> torch.device:
    torch.set_num_threads(max(1, args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(args.seed)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(dev)


def emit(record: dict) -> None:
    """One JSON line on stdout (flushed: the runner reads it as it comes)."""
    print(json.dumps(record, default=_jsonable), flush=True)


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, torch.dtype | torch.device):
        return str(x)
    return str(x)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "best": min(values), "reps": len(values)}


# ---------------------------------------------------------------------------------------------- memory

def release_memory() -> None:
    """Free what the previous configuration left: GC, CUDA cache, and glibc ``malloc_trim`` (returns freed heap
    pages to the OS, so RSS growth measures the next configuration rather than allocator slack)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """Peak memory growth over the level at ``__enter__``.

    CPU: RSS sampled every 2 ms by a thread (``psutil``); CUDA: ``torch.cuda.max_memory_allocated``.
    ``.peak_mib`` after the block.
    """

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak_mib = 0.0

    def __enter__(self):
        release_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = rss_bytes()
        self._peak = self._base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, rss_bytes())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, rss_bytes())
            self.peak_mib = (self._peak - self._base) / 2**20
        return False


# ---------------------------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def timer(device: torch.device, out: list):
    sync(device)
    t0 = time.perf_counter()
    yield
    sync(device)
    out.append(time.perf_counter() - t0)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                      reps: int = 5) -> float:
    """Best FLOP/s of an [n, n] @ [n, n] matmul (2·n³ FLOPs) on this device/thread count."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(reps):
        with timer(device, times):
            torch.matmul(a, b)
    return 2 * n**3 / min(times)


# ---------------------------------------------------------------------------------------------- models

def is_random(name: str) -> bool:
    return name.startswith("random-llama:")


def load_base(name: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """-> (HF causal LM in eval mode on ``device``, tokenizer or None)."""
    if is_random(name):
        from transformers import LlamaConfig, LlamaForCausalLM

        size = name.split(":", 1)[1]
        if size not in RANDOM_LLAMA:
            raise SystemExit(f"unknown random-llama size {size!r}; choose one of {sorted(RANDOM_LLAMA)}")
        cfg = LlamaConfig(**RANDOM_LLAMA[size], max_position_embeddings=4096, tie_word_embeddings=False,
                          pad_token_id=0, eos_token_id=1, bos_token_id=None)
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(dtype)
        model.generation_config.pad_token_id = 0
        model.generation_config.eos_token_id = 1
        return model.eval(), None
    from cmpo.models.loading import load_model

    return load_model(name, dtype=dtype, device=device)


def matmul_params(model) -> tuple[int, int]:
    """(N = parameters of every Linear in the trunk + the LM head, LM-head parameters V·d).

    Input embeddings are a lookup, not a matmul, and are excluded; a head tied to them is counted once as
    the head.
    """
    from torch import nn

    head = model.get_output_embeddings()
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
    return n + head.weight.numel(), head.weight.numel()


def versions() -> dict:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for pkg in ("transformers", "peft", "accelerate", "trl", "datasets"):
        try:
            from importlib.metadata import version

            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is simply not listed
            pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
