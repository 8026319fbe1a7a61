"""Which part of a trained plural model carries each attribute's effect: its head delta or its adapters?

    python benchmarks/ablate_parts.py --run runs/demo [--attributes structure] [--threads 2]

For each attribute a, generates greedily on the run's held-out prompts under λ = e_a four times — the
trained model, its head delta ablated (adapters alone steer), its adapter deltas ablated (the head alone
steers a reference trunk), both ablated (= the reference model) — and rule-rates the outputs
(:mod:`cmpo.eval.raters`). Prints one JSON line per (attribute, variant): mean score per attribute, the
share of degenerate outputs (:func:`cmpo.eval.steerability.is_degenerate`) and of finished ones, and a hash
of the outputs (equal hashes = identical generations).
Models without plural adapters get the first two variants only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

VARIANTS = {"trained": (), "head ablated": ("head",), "adapters ablated": ("adapters",),
            "both ablated (reference)": ("head", "adapters")}


def heldout_prompts(data_dir: Path) -> list:
    """The prepared data's validation prompts, once each, in order (as `cmpo demo` evaluates them)."""
    from cmpo.demo.pipeline import unique_prompts
    from cmpo.eval.cli import load_prepared

    _, splits = load_prepared(str(data_dir))
    return [row["prompt"] for row in unique_prompts(splits["sft"]["validation"])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a `cmpo demo` output dir (its model/ and data/)")
    ap.add_argument("--attributes", help="comma-separated attributes to ablate (default: all)")
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from cmpo.eval.generation import generate_conditioned
    from cmpo.eval.metrics import Condition
    from cmpo.eval.raters import RuleScorer
    from cmpo.eval.steerability import is_degenerate
    from cmpo.models.ablation import ablated
    from cmpo.serve.generate import SteerableModel

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    sm = SteerableModel.load(str(run / "model"))
    plural = sm.model
    attrs = plural.attributes
    chosen = [a.strip() for a in args.attributes.split(",")] if args.attributes else attrs
    scorer = RuleScorer()
    prompts = heldout_prompts(run / "data")
    variants = {n: p for n, p in VARIANTS.items() if plural.config.adapter == "plural" or "adapters" not in p}
    for a in chosen:
        cond = Condition(weights=tuple(1.0 if b == a else 0.0 for b in attrs))
        for name, parts in variants.items():
            with ablated(plural, a, parts) if parts else contextlib.nullcontext():
                texts, finished = generate_conditioned(sm, prompts, cond, max_new_tokens=args.max_new_tokens,
                                                       batch_size=args.batch_size,
                                                       repetition_penalty=args.repetition_penalty)
            row = {"attribute": a, "variant": name, "n": len(texts),
                   "scores": {b: float(scorer.score(prompts, texts, b, finished).mean()) for b in attrs
                              if scorer.supports(b)},
                   "degenerate": float(np.mean([is_degenerate(t) for t in texts])),
                   "finished": float(np.mean(finished)),
                   "outputs_sha1": hashlib.sha1("\x00".join(texts).encode()).hexdigest()}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
