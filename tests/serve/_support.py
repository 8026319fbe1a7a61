"""Helpers for the serve tests: tiny steerable models and a real `cmpo serve` process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ATTRS = ["helpfulness", "humor", "safety"]


def perturb(module: torch.nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    """Move every trainable parameter (head B/A, adapters) off its identity init so λ changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))


def build_plural(out: Path, adapter: str = "shared", head_mode: str = "lowrank") -> Path:
    from cmpo.models.loading import load_model
    from cmpo.models.plural import PluralConfig, PluralLM

    model, tok = load_model("tiny-random")
    cfg = PluralConfig(attributes=list(ATTRS), base_model="tiny-random", head_mode=head_mode, adapter=adapter,
                       head_rank=4, adapter_rank=4)
    plural = PluralLM(model, cfg, tokenizer=tok)
    perturb(plural)
    return plural.save(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model_dir: Path, *extra: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "cmpo.cli", "serve", "--model", str(model_dir), "--port", str(self.port),
               "--model-name", "tiny-plural", *extra]
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"cmpo-serve-{self.port}.log"
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self._wait()

    def _wait(self, timeout: float = 90) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout}s:\n{self.log.read_text()}")

    def alive(self) -> bool:
        import httpx

        return self.proc.poll() is None and httpx.get(self.url + "/health", timeout=5).status_code == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
