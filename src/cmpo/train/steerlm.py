"""SteerLM baseline (thesis §2.5, §5.3.1, App. Table A.1): APM -> relabel -> ACM.

    cmpo train steerlm-apm --recipe recipes/steerlm-apm-cpu.yaml --data prepared/ --out runs/apm
    cmpo steerlm relabel   --apm runs/apm --data prepared/ --out prepared-relabelled/
    cmpo train steerlm-acm --recipe recipes/steerlm-acm-cpu.yaml --data prepared-relabelled/ --out runs/acm
    cmpo generate --model runs/acm --method steerlm --attributes humor=4 ...

This module owns the attribute string the ACM is conditioned on (``helpfulness:4,correctness:3,humor:0``) and
the command-line entry points; the model code lives in ``steerlm_apm`` (attribute prediction model),
``steerlm_relabel`` and ``steerlm_acm`` (attribute-conditioned SFT).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Mapping, Sequence

from cmpo.models.steering import SteeringError

_INT = re.compile(r"[+-]?\d+")
_BAD_NAME = re.compile(r"[,:\s]")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or _BAD_NAME.search(name):
        raise SteeringError(f"bad SteerLM attribute name {name!r}: must be non-empty with no ',', ':' or spaces")


def _format_value(name: str, v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SteeringError(f"SteerLM attribute {name!r} needs a finite number, got {v!r}")
    if isinstance(v, int):
        return str(v)
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def format_attributes(values: Mapping[str, float], attributes: Sequence[str], prefix: str = "",
                      default: float | None = 0) -> str:
    """``{"humor": 4}``, ``[helpfulness, humor]`` -> ``prefix + "helpfulness:0,humor:4"``.

    Attributes appear in ``attributes`` order; a missing one gets ``default`` (thesis evaluation: the target
    attribute 4, all others 0), or is an error when ``default`` is None. Integral values print as integers,
    other floats with ``repr`` (so :func:`parse_attributes` gives back exactly the same numbers).
    """
    attributes = list(attributes)
    for a in attributes:
        _check_name(a)
    if len(set(attributes)) != len(attributes):
        raise SteeringError(f"duplicate SteerLM attribute names in {attributes}")
    unknown = [n for n in values if n not in attributes]
    if unknown:
        raise SteeringError(f"unknown SteerLM attribute(s) {unknown}; this model has {attributes}")
    parts = []
    for name in attributes:
        if name not in values:
            if default is None:
                raise SteeringError(f"SteerLM attribute {name!r} has no value")
            v = default
        else:
            v = values[name]
        parts.append(f"{name}:{_format_value(name, v)}")
    return prefix + ",".join(parts)


def parse_attributes(s: str, attributes: Sequence[str] | None = None, prefix: str = "") -> dict[str, float]:
    """Inverse of :func:`format_attributes`: ``"helpfulness:0,humor:4"`` -> ``{"helpfulness": 0, "humor": 4}``.

    ``prefix`` (e.g. ``<extra_id_2>``) is stripped if present. With ``attributes``, the string must name exactly
    those attributes in that order. Integers come back as ``int``, other numbers as ``float``.
    """
    if not isinstance(s, str):
        raise SteeringError(f"attribute string must be a str, got {type(s).__name__}")
    text = s.strip()
    if prefix and text.startswith(prefix):
        text = text[len(prefix):]
    out: dict[str, float] = {}
    for part in text.split(",") if text else []:
        if ":" not in part:
            raise SteeringError(f"bad attribute item {part!r} in {s!r}: expected name:value")
        name, raw = part.split(":", 1)
        _check_name(name)
        if name in out:
            raise SteeringError(f"attribute {name!r} given twice in {s!r}")
        try:
            v = int(raw) if _INT.fullmatch(raw) else float(raw)
        except ValueError:
            raise SteeringError(f"bad value for {name!r} in {s!r}: {raw!r} is not a number") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise SteeringError(f"bad value for {name!r} in {s!r}: {raw!r} is not finite")
        out[name] = v
    if attributes is not None and list(out) != list(attributes):
        raise SteeringError(f"attribute string {s!r} names {list(out)}, expected {list(attributes)} in order")
    return out


# ---------------------------------------------------------------------- command line


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--recipe", help="YAML recipe (see recipes/steerlm-*.yaml)")
    p.add_argument("--data", help=f"`cmpo prepare` output directory ({what}; overrides data.path)")
    p.add_argument("--model", help="base model: short name, HF id or dir (overrides model.name)")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue a killed run: the last checkpoint in train.output_dir, or CHECKPOINT")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. train.max_steps=10")


def add_apm_arguments(parser: argparse.ArgumentParser) -> None:
    """``cmpo train steerlm-apm``: attribute prediction model (k heads over 5 Likert classes, or regression)."""
    _common(parser, "its sft split's ratings are the labels")


def add_acm_arguments(parser: argparse.ArgumentParser) -> None:
    """``cmpo train steerlm-acm``: SFT on (prompt, attribute string, response)."""
    _common(parser, "normally the output of `cmpo steerlm relabel`")
    parser.add_argument("--attribute-prefix", default=None,
                        help="text before the attribute string (NeMo: '<extra_id_2>'; overrides acm.attribute_prefix)")


def _finish(args, kind: str, fn) -> int:
    from cmpo.train.steerlm_acm import ACMRunConfig
    from cmpo.train.steerlm_apm import APMRunConfig

    cls = APMRunConfig if kind == "steerlm-apm" else ACMRunConfig
    cfg = cls.load(args.recipe, args.overrides)
    if cfg.kind and cfg.kind != kind:
        raise SystemExit(f"recipe {args.recipe} is for `cmpo train {cfg.kind}`, not `{kind}`")
    if args.model:
        cfg.model.name = args.model
    if args.data:
        cfg.data.path = args.data
    if getattr(args, "attribute_prefix", None) is not None:
        cfg.acm.attribute_prefix = args.attribute_prefix
    if not cfg.data.path:
        print("error: no data: pass --data DIR or set data.path in the recipe", file=sys.stderr)
        return 2
    if not args.out:
        print("error: --out DIR is required", file=sys.stderr)
        return 2
    out = fn(cfg, cfg.data.path, args.out, resume=args.resume)
    print(f"wrote {out}")
    return 0


def run_apm(args) -> int:
    from cmpo.train.steerlm_apm import train_apm

    return _finish(args, "steerlm-apm", train_apm)


def run_acm(args) -> int:
    from cmpo.train.steerlm_acm import train_acm

    return _finish(args, "steerlm-acm", train_acm)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``cmpo steerlm <sub-command>``."""
    sub = parser.add_subparsers(dest="steerlm_command", metavar="<sub-command>")
    p = sub.add_parser("relabel", help="predict every attribute of every sft response with an APM",
                       description="Rate every response of a prepared sft split with a trained APM so the ACM "
                                   "trains on complete attribute vectors. Resumable: rerun the same command "
                                   "after an interruption.")
    p.add_argument("--apm", required=True, help="APM directory (from `cmpo train steerlm-apm`)")
    p.add_argument("--data", required=True, help="`cmpo prepare` output directory")
    p.add_argument("--out", required=True, help="output prepared-data directory (meta.json + sft/)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=256, help="rows per resumable shard")
    p.add_argument("--splits", default=None, help="comma-separated sft splits (default: all)")
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: cuda if available)")
    p.add_argument("--dtype", default="float32")


def run(args) -> int:
    if getattr(args, "steerlm_command", None) != "relabel":
        print("usage: cmpo steerlm relabel --apm DIR --data DIR --out DIR (see --help)", file=sys.stderr)
        return 2
    from cmpo.train.steerlm_relabel import relabel

    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    out = relabel(args.apm, args.data, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                  splits=splits, device=args.device, dtype=args.dtype)
    print(f"wrote {out}")
    return 0
