"""``cmpo train {sft,dpo,cmpo,steerlm-apm,steerlm-acm}``.

    cmpo train sft  --recipe recipes/cpu-smollm2-sft.yaml  --data prepared/ --out runs/sft
    cmpo train dpo  --recipe recipes/cpu-smollm2-dpo.yaml  --attribute helpfulness --model runs/sft --out runs/dpo-h
    cmpo train cmpo --recipe recipes/cpu-smollm2-cmpo.yaml --data prepared/ --model runs/sft --out runs/cmpo \\
        train.learning_rate=1e-4 loss.epsilon=0
    cmpo train cmpo ... --resume          # continue the last checkpoint in train.output_dir (<out>.checkpoints)

Trailing ``key=value`` arguments override recipe entries (``train.max_steps=20``, ``model.adapter=plural``).
Multi-process: ``accelerate launch --config_file accelerate/ddp.yaml -m cmpo.cli train cmpo ...``.
"""

from __future__ import annotations

import argparse
import sys

STEERLM = {"steerlm-apm": ("add_apm_arguments", "run_apm"), "steerlm-acm": ("add_acm_arguments", "run_acm")}


def _common(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--recipe", help="YAML recipe (see recipes/)")
    p.add_argument("--data", help="`cmpo prepare` output directory (overrides data.path)")
    p.add_argument("--model", help="base model (sft) or SFT model (dpo/cmpo): short name, HF id or dir "
                                   "(overrides model.name)")
    p.add_argument("--out", help="output model directory (required unless the recipe sets out)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue a killed run: the last checkpoint in train.output_dir, or CHECKPOINT")
    if kind == "dpo":
        p.add_argument("--attribute", help="the attribute whose pairs to train on (overrides attribute)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. train.max_steps=10")


def _steerlm(name: str):
    """The SteerLM engineer's functions (src/cmpo/train/steerlm.py), or None if not available yet."""
    try:
        import cmpo.train.steerlm as steerlm
    except ImportError:
        return None
    add, run = STEERLM[name]
    if not hasattr(steerlm, add) or not hasattr(steerlm, run):
        return None
    return getattr(steerlm, add), getattr(steerlm, run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="train_kind", metavar="<trainer>")
    _common(sub.add_parser("sft", help="supervised fine-tuning (loss on response tokens, best by validation)"),
            "sft")
    _common(sub.add_parser("dpo", help="conservative DPO on one attribute's pairs"), "dpo")
    _common(sub.add_parser("cmpo", help="CMPO: the plural model on λ-conditioned pairs"), "cmpo")
    for name in STEERLM:
        p = sub.add_parser(name, help=f"SteerLM {name.split('-')[1].upper()} (see cmpo.train.steerlm)")
        fns = _steerlm(name)
        if fns is not None:
            fns[0](p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def build_config(args):
    from cmpo.train.config import load_run_config

    cfg = load_run_config(args.recipe, args.overrides)
    if cfg.kind and cfg.kind != args.train_kind:
        raise SystemExit(f"recipe {args.recipe} is for `cmpo train {cfg.kind}`, not `{args.train_kind}`")
    if args.model:
        cfg.model.name = args.model
    if args.data:
        cfg.data.path = args.data
    if getattr(args, "attribute", None):
        cfg.attribute = args.attribute
    return cfg


def run(args) -> int:
    kind = getattr(args, "train_kind", None)
    if kind is None:
        print("usage: cmpo train {sft,dpo,cmpo,steerlm-apm,steerlm-acm} --help", file=sys.stderr)
        return 2
    if kind in STEERLM:
        fns = _steerlm(kind)
        if fns is None:
            print(f"error: `cmpo train {kind}` needs cmpo.train.steerlm.{STEERLM[kind][1]}, which is not "
                  "available in this installation yet", file=sys.stderr)
            return 2
        return fns[1](args)
    from cmpo.train import runs

    cfg = build_config(args)
    if not cfg.data.path:
        print("error: no data: pass --data DIR or set data.path in the recipe", file=sys.stderr)
        return 2
    if not args.out:
        print("error: --out DIR is required", file=sys.stderr)
        return 2
    fn = {"sft": runs.run_sft, "dpo": runs.run_dpo, "cmpo": runs.run_cmpo}[kind]
    result = fn(cfg, cfg.data.path, args.out, resume=args.resume)
    print(f"wrote {result.out}")
    return 0
