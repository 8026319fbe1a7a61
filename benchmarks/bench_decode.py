"""Greedy decode speed (new tokens/s) of the base model vs the ways a plural model can produce logits.

    python benchmarks/bench_decode.py --model smollm2-135m --threads 1 --batch-sizes 1,16 --k 9

Variants (same trunk weights, same prompts, ``generate`` with a KV cache, greedy, exactly ``--new-tokens`` new
tokens per row via ``min_new_tokens``):
  base         the plain Hugging Face model
  naive        k full head matrices, each row's logits = Σ_j λ_j (h W_j) computed head by head (k [.., V]
               matmuls per step) — the baseline written here, not cmpo code
  fused        ``PluralLM.fused(λ)``: Σ_j λ_j W_j folded into one [V, d] matrix (one λ for the batch)
  mixed        ``PluralLM.steer(λ [B, k])``: a different λ per row through the low-rank head
  fused_lora   ``fused`` on a plural model with the shared peft LoRA on q/k/v/o left unmerged — how
               ``SteerableModel`` serves a trained CMPO model (``cmpo generate``)

Plural variants use ``adapter=none`` (head cost only) except ``fused_lora``. Repetitions alternate the variants;
the result is the median (and best) per variant, and ratios to ``base`` of the same batch size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_arguments, emit, load_base, setup, summary, timer, versions

VARIANTS = ("base", "naive", "fused", "mixed", "fused_lora")


class NaiveMixHead(nn.Module):
    """Baseline: logits = Σ_j λ_j (h W_j), one full [V, d] matmul per head. ``heads`` [k, V, d], λ [k] or [B, k]."""

    def __init__(self, heads: torch.Tensor):
        super().__init__()
        self.heads = nn.Parameter(heads, requires_grad=False)
        self.weights: torch.Tensor | None = None

    @property
    def weight(self):
        return self.heads[0]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.heads.dtype)
        w = self.weights
        w = w.view(1, 1, -1) if w.dim() == 1 else w.view(w.shape[0], 1, -1)  # [.., 1, k] against [B, T, V]
        out = None
        for j in range(self.heads.shape[0]):
            term = w[..., j : j + 1] * F.linear(h, self.heads[j])
            out = term if out is None else out + term
        return out


def plural_model(a, device, dtype, adapter: str):
    from cmpo.models.plural import PluralConfig, PluralLM

    model, tok = load_base(a.model, dtype, device, a.seed)
    pc = PluralConfig(attributes=[f"attr{j}" for j in range(a.k)], head_mode="lowrank", adapter=adapter,
                      base_model=a.model)
    plural = PluralLM.from_base(model, pc).to(device).eval()
    with torch.no_grad():  # trained-looking heads (B = 0 at init would make the delta trivially zero)
        plural.head.B.normal_(0, 0.01)
    return plural


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32", help="trunk dtype (fp32 on CPU: bf16 decode is slower here)")
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    add_common_arguments(ap)
    a = ap.parse_args(argv)
    device = setup(a)
    dtype = getattr(torch, a.dtype)
    variants = [v for v in a.variants.split(",") if v]
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]

    base, _ = load_base(a.model, dtype, device, a.seed)
    base.eval()
    vocab = base.get_output_embeddings().weight.shape[0]
    plural = plural_model(a, device, dtype, "none")
    plural_lora = plural_model(a, device, dtype, "shared") if "fused_lora" in variants else None
    if plural_lora is not None:
        with torch.no_grad():
            for n, p in plural_lora.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
    naive_head = None
    if "naive" in variants:
        heads = torch.stack([plural.head.head_weight(j).detach() for j in range(a.k)]).to(torch.float32)
        naive_head = NaiveMixHead(heads).to(device)
    base_head = base.get_output_embeddings()
    g = torch.Generator().manual_seed(a.seed)
    pad = base.generation_config.pad_token_id
    pad = 0 if pad is None else pad

    def run(variant: str, ids: torch.Tensor, lam1: torch.Tensor, lamb: torch.Tensor):
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                  min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=pad)
        if variant == "base":
            return base.generate(**kw)
        if variant == "naive":
            naive_head.weights = lamb
            base.set_output_embeddings(naive_head)
            try:
                return base.generate(**kw)
            finally:
                base.set_output_embeddings(base_head)
        if variant == "fused":
            with plural.fused(lam1) as m:
                return m.generate(**kw)
        if variant == "mixed":
            with plural.steer(lamb) as m:
                return m.generate(**kw)
        if variant == "fused_lora":
            with plural_lora.fused(lam1) as m:
                return m.generate(**kw)
        raise SystemExit(f"unknown variant {variant!r}")

    emit({"bench": "decode", "kind": "setup", "model": a.model, "dtype": a.dtype, "device": str(device),
          "threads": a.threads, "k": a.k, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
          "reps": a.reps, "versions": versions()})
    for bsz in batch_sizes:
        ids = torch.randint(3, vocab, (bsz, a.prompt_len), generator=g).to(device)
        lam1 = torch.full((a.k,), 1.0 / a.k, device=device)
        lamb = torch.rand(bsz, a.k, generator=g).add_(0.05)
        lamb = (lamb / lamb.sum(1, keepdim=True)).to(device)
        times = {v: [] for v in variants}
        with torch.inference_mode():
            for v in variants:  # warm-up (excluded)
                run(v, ids[:, :8], lam1, lamb)
            for r in range(a.reps):
                for v in (variants if r % 2 == 0 else variants[::-1]):
                    with timer(device, times[v]):
                        out = run(v, ids, lam1, lamb)
                    assert out.shape[1] == a.prompt_len + a.new_tokens, out.shape
        tps = {}
        for v in variants:
            s = summary(times[v])
            tps[v] = bsz * a.new_tokens / s["median"]
            emit({"bench": "decode", "kind": "summary", "batch": bsz, "variant": v, "tokens_per_s": tps[v],
                  "tokens_per_s_best": bsz * a.new_tokens / s["best"], "seconds": s, "times": times[v]})
        if "base" in tps:
            emit({"bench": "decode", "kind": "ratios", "batch": bsz,
                  **{f"{v}/base": tps[v] / tps["base"] for v in variants if v != "base"}})


if __name__ == "__main__":
    main()
