"""``cmpo export``: fold one fixed steering λ into a standard Hugging Face checkpoint.

The export is the plain base architecture with every LoRA delta merged (shared adapter: peft's delta;
plural adapters: s·Σ_j λ_j B_j A_j) and the fused head Σ_j λ_j W_j as an untied ``lm_head``, plus the
tokenizer and its chat template. ``AutoModelForCausalLM.from_pretrained(out)`` (or vLLM) loads it with no cmpo
code, and its logits equal the plural model's under λ. ``cmpo_model.json`` records ``{"kind": "export",
attributes, weights, template, base_model}`` so cmpo tools know what it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cmpo.io import atomic_dir
from cmpo.models.steering import SteeringError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a plural (CMPO) model directory")
    w = parser.add_mutually_exclusive_group()
    w.add_argument("--weights", help="steering λ to fold in, e.g. helpfulness=0.7,humor=0.3 "
                   "(default: the model's default weights)")
    w.add_argument("--weights-file", help="JSON object {attribute: weight} or a file holding a=1,b=0")
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the saved checkpoint (folding always happens in float64/float32)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def export_model(model_dir: str | os.PathLike, weights, out_dir: str | os.PathLike,
                 dtype: str = "float32") -> Path:
    """Export ``model_dir`` under ``weights`` (None -> the model's default λ) to ``out_dir``."""
    import torch

    from cmpo.models.plural import PluralLM, is_plural_dir

    if not is_plural_dir(model_dir):
        raise ValueError(f"{model_dir}: not a plural (CMPO) model directory (no cmpo_config.json)")
    from cmpo.serve.generate import SteerableModel

    plural = PluralLM.load(model_dir, dtype=torch.float32)
    if plural.tokenizer is None:  # the export must carry a tokenizer and chat template
        from cmpo.models.loading import load_tokenizer

        plural.tokenizer = load_tokenizer(plural.config.base_model)
    values = SteerableModel("plural", plural, plural.tokenizer, None, plural.attributes).resolve_weights(weights)
    vec = torch.tensor(values, dtype=torch.float32)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        staged = plural.export(vec, tmp / "model")
        if dtype != "float32":
            from transformers import AutoModelForCausalLM

            m = AutoModelForCausalLM.from_pretrained(staged, dtype=getattr(torch, dtype))
            m.save_pretrained(staged, safe_serialization=True)
        meta = {"kind": "export", "template": plural.config.template, "base_model": plural.config.base_model,
                "attributes": plural.attributes, "weights": dict(zip(plural.attributes, values)),
                "source": str(model_dir)}
        (staged / "cmpo_model.json").write_text(json.dumps(meta, indent=2))
        for f in staged.iterdir():  # the staged export becomes the atomic dir's content
            os.replace(f, tmp / f.name)
        staged.rmdir()
    return out


def run(args) -> int:
    from cmpo.serve.generate_cli import weights_from_args

    try:
        if Path(args.out).exists() and not args.force:
            raise ValueError(f"{args.out} exists (use --force to overwrite)")
        out = export_model(args.model, weights_from_args(args), args.out, dtype=args.dtype)
    except (SteeringError, ValueError, OSError) as e:
        print(f"cmpo export: error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((out / "cmpo_model.json").read_text())
    print(f"exported {args.model} with weights {meta['weights']} to {out}")
    return 0
