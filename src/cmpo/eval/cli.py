"""``cmpo eval``: evaluate one or more models on prepared validation data and write a report.

    cmpo eval --models cmpo=runs/cmpo dpo=runs/dpo-humor,runs/dpo-helpfulness acm=runs/acm \\
              --reference runs/sft --data data/helpsteer --metrics accuracy,correlation,winrate,steerability \\
              --judge rules --out reports/run1

Library use (the demo calls this): ``results = evaluate(models, data=..., ...)`` then
``cmpo.eval.report.write_report(results, out_dir)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

METRICS = ("accuracy", "correlation", "winrate", "steerability", "pareto")
DEFAULT_METRICS = "accuracy,correlation,winrate,steerability"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=DIR",
                        help="models to compare; DIR may be comma-separated per-attribute DPO model dirs")
    parser.add_argument("--reference", default=None,
                        help="reference model dir or short name (default: each CMPO model's own π_ref)")
    parser.add_argument("--data", help="`cmpo prepare` output dir (validation pairs, ratings and prompts)")
    parser.add_argument("--split", default="validation", help="split of the prepared data (default validation)")
    parser.add_argument("--prompts", help="prompts for generation metrics instead of --data: a JSON list of "
                        "strings/conversations or JSONL with a 'prompt' field")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--attributes", help="comma-separated attributes to evaluate (default: all in the data)")
    parser.add_argument("--judge", default="rules", help="rules | apm:DIR | openai (win-rate judge)")
    parser.add_argument("--scorer", default=None, help="rules | apm:DIR for steerability/Pareto scores "
                        "(default: the judge's scorer, or rules with --judge openai)")
    parser.add_argument("--judge-model", help="OpenAI-compatible judge model (default $CMPO_JUDGE_MODEL)")
    parser.add_argument("--judge-base-url", help="judge endpoint (default $CMPO_JUDGE_BASE_URL or OpenAI)")
    parser.add_argument("--judge-concurrency", type=int, default=8)
    parser.add_argument("--judge-cache", help="sqlite verdict cache (default OUT/judge_cache.sqlite)")
    parser.add_argument("--num-prompts", type=int, default=50, help="sampled prompts for win-rate/steerability")
    parser.add_argument("--max-pairs", type=int, default=200, help="validation pairs per attribute for accuracy")
    parser.add_argument("--max-rated", type=int, default=200, help="rated responses for rank correlation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--generation-batch-size", type=int, default=None,
                        help="rows per generation batch (default --batch-size); the effect matrix's and the "
                        "Pareto sweep's conditions share batches")
    parser.add_argument("--pareto", metavar="A,B", help="two attributes for the λ = (t, 1−t) sweep")
    parser.add_argument("--pareto-grid", type=int, default=5, help="number of t values in [0, 1]")
    parser.add_argument("--pareto-prompts", type=int, default=None,
                        help="run the sweep on the first N of the prompts only (default: all)")
    parser.add_argument("--logs", nargs="*", default=[], metavar="NAME=DIR",
                        help="training output dirs whose trainer_state.json curves to plot")
    parser.add_argument("--no-perplexity", action="store_true", help="skip the reference-perplexity guard")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu | cuda | auto")
    parser.add_argument("--out", required=True, help="output dir: metrics.json, plots/, report.html")


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{what}: {item!r} is not NAME=DIR")
        name, path = item.split("=", 1)
        if not name or not path:
            raise ValueError(f"{what}: {item!r} is not NAME=DIR")
        if name in out:
            raise ValueError(f"{what}: name {name!r} given twice")
        out[name] = path
    return out


def load_prepared(data_dir: str | Path) -> tuple[dict, dict]:
    """-> (meta, {"sft"|"pairs"|"conditioned": DatasetDict}) for the splits that exist."""
    from datasets import load_from_disk

    d = Path(data_dir)
    if not (d / "meta.json").exists():
        raise FileNotFoundError(f"{d / 'meta.json'} not found: is {d} a `cmpo prepare` output dir?")
    meta = json.loads((d / "meta.json").read_text())
    return meta, {k: load_from_disk(str(d / k)) for k in ("sft", "pairs", "conditioned") if (d / k).is_dir()}


def read_prompts(path: str | Path) -> list:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        items = json.loads(text)
    else:
        items = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line)["prompt"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{p}: row {i}: expected a JSON object with a 'prompt' field") from None
    items = [x["prompt"] if isinstance(x, dict) else x for x in items]
    for i, x in enumerate(items):
        if not (isinstance(x, str) or (isinstance(x, list) and x and x[-1].get("role") == "user")):
            raise ValueError(f"{p}: prompt {i}: field 'prompt' must be a string or messages ending with a user turn")
    return items


def sample_prompts(splits: dict, split: str, n: int, seed: int) -> list:
    """``n`` distinct validation prompts (seeded), from the sft split, else pairs/conditioned."""
    from cmpo.eval.metrics import sample_rows

    for kind in ("sft", "pairs", "conditioned"):
        if kind in splits and split in splits[kind]:
            ds = splits[kind][split]
            seen, prompts = set(), []
            ids = ds["prompt_id"] if "prompt_id" in ds.column_names else range(len(ds))
            for i, pid in enumerate(ids):
                if pid not in seen:
                    seen.add(pid)
                    prompts.append(i)
            picked = [prompts[j] for j in sample_rows(len(prompts), n, seed)]
            return [ds[i]["prompt"] for i in picked]
    raise ValueError(f"the prepared data has no {split!r} split to draw prompts from")


def evaluate(models: dict, metrics: Sequence[str], reference=None, data: str | None = None,
             prompts: list | None = None, split: str = "validation", attributes: Sequence[str] | None = None,
             judge=None, scorer=None, num_prompts: int = 50, max_pairs: int | None = 200,
             max_rated: int | None = 200, seed: int = 0, max_new_tokens: int = 512, repetition_penalty: float = 1.0,
             batch_size: int = 8, pareto: Sequence[str] | None = None, pareto_grid: int = 5,
             logs: dict | None = None, perplexity: bool = True, progress: bool = True,
             generations_path: str | Path | None = None, generation_batch_size: int | None = None,
             pareto_prompts: int | None = None) -> dict:
    """Run the requested metrics for ``models`` ({name: EvalModel}) -> the ``results`` dict of report.py.

    ``reference``: a SteerableModel (None: plural models use their own π_ref). ``judge``/``scorer``: see
    :mod:`cmpo.eval.judges` / :mod:`cmpo.eval.raters`. ``generations_path``: write every generated response
    (model, condition, prompt, response, finished) there as JSONL, for reading what the numbers rate.
    ``generation_batch_size``: rows per generation batch (default ``batch_size``); the effect matrix's and
    Pareto sweep's conditions share batches, so a larger one pays off on CPU. ``pareto_prompts``: the sweep
    uses only the first that many prompts (None: all) — it generates ``pareto_grid`` conditions per prompt and
    reports means, where the effect matrix's CIs need every prompt.
    """
    from cmpo.eval import judges as J
    from cmpo.eval import metrics as M
    from cmpo.eval import plots
    from cmpo.eval import steerability as S
    from cmpo.eval.generation import GenerationCache

    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {list(METRICS)}")
    meta, splits = load_prepared(data) if data else ({}, {})
    attrs = list(attributes or meta.get("attributes") or
                 dict.fromkeys(a for em in models.values() for a in em.attributes))
    if not attrs:
        raise ValueError("no attributes: pass --attributes or --data with meta.json attributes")
    results: dict = {
        "settings": {"metrics": list(metrics), "data": data, "split": split, "attributes": attrs, "seed": seed,
                     "num_prompts": num_prompts, "max_pairs": max_pairs, "max_rated": max_rated,
                     "max_new_tokens": max_new_tokens, "decoding": "greedy", "repetition_penalty": repetition_penalty,
                     "pareto": list(pareto) if pareto else None, "pareto_grid": pareto_grid,
                     "reference": getattr(reference, "path", None) or "each CMPO model's own π_ref",
                     "ci": "Wilson 95% (accuracy), percentile bootstrap 95%, 2000 resamples (means)"},
        "models": {n: {"kind": em.kind, "attributes": em.attributes,
                       "paths": [str(getattr(m, "path", "")) for m in em.models.values()]} for n, em in models.items()},
    }

    def need(split_kind: str, metric: str):
        if split_kind not in splits or split not in splits[split_kind]:
            raise ValueError(f"metric {metric!r} needs the prepared {split_kind}/{split} split (--data)")
        return splits[split_kind][split]

    if "accuracy" in metrics:
        pairs = need("pairs", "accuracy")
        results["accuracy"] = {n: M.evaluate_preference_accuracy(em, pairs, attrs, reference, max_pairs, seed,
                                                                 batch_size, progress) for n, em in models.items()}
    if "correlation" in metrics:
        rated = need("sft", "correlation")
        results["correlation"] = {n: M.evaluate_rank_correlation(em, rated, attrs, True, max_rated, seed,
                                                                 batch_size, progress) for n, em in models.items()}
    gen_metrics = {"winrate", "steerability", "pareto"} & set(metrics)
    if gen_metrics:
        if prompts is None:
            if not splits:
                raise ValueError(f"metrics {sorted(gen_metrics)} need prompts: pass --data or --prompts")
            prompts = sample_prompts(splits, split, num_prompts, seed)
        else:
            prompts = [prompts[i] for i in M.sample_rows(len(prompts), num_prompts, seed)]
        results["settings"]["prompts_used"] = len(prompts)
        if pareto_prompts is not None and pareto_prompts < 1:
            raise ValueError(f"pareto_prompts must be >= 1, got {pareto_prompts}")
        sweep_prompts = prompts[:pareto_prompts]
        results["settings"]["pareto_prompts"] = len(sweep_prompts)
        gens = GenerationCache(max_new_tokens, generation_batch_size or batch_size, progress,
                                 repetition_penalty=repetition_penalty)
        if scorer is not None and ("steerability" in metrics or "pareto" in metrics):
            for em in models.values():
                S.prefetch_conditions(em, prompts, scorer, gens, attrs, pareto if "pareto" in metrics else None,
                                      pareto_grid, len(sweep_prompts))
        if "winrate" in metrics:
            if judge is None:
                raise ValueError("metric 'winrate' needs a judge")
            results["winrate"] = {n: J.judge_win_rates(em, prompts, attrs, judge, gens, reference, seed, progress)
                                  for n, em in models.items()}
            results["judge"] = judge.describe()
        if "steerability" in metrics:
            if scorer is None:
                raise ValueError("metric 'steerability' needs a scorer (rules or apm:DIR)")
            results["steerability"] = {}
            for n, em in models.items():
                if em.kind == "hf" or not any(em.covers(a) and scorer.supports(a) for a in attrs):
                    log.warning("steerability: skipping %s (%s model, or no attribute the scorer rates)", n, em.kind)
                    continue  # one unsteerable model: every condition gives the same output
                results["steerability"][n] = S.evaluate_steerability(
                    em, prompts, scorer, gens, reference, attrs, seed=seed, perplexity=perplexity,
                    batch_size=batch_size)
        if "pareto" in metrics:
            if not pareto or len(pareto) != 2:
                raise ValueError("metric 'pareto' needs --pareto A,B (two attributes)")
            results["pareto"] = {n: S.evaluate_pareto(em, sweep_prompts, scorer, gens, pareto, pareto_grid, reference)
                                 for n, em in models.items() if em.kind != "hf"}
        if generations_path is not None:
            from cmpo.io import write_jsonl

            write_jsonl(gens.rows(), generations_path)
    if logs:
        results["training"] = {n: plots.load_log_history(d) for n, d in logs.items()}
    return results


def run(args) -> int:
    from cmpo.eval.judges import make_judge
    from cmpo.eval.metrics import EvalModel
    from cmpo.eval.raters import RuleScorer
    from cmpo.eval.report import write_report

    try:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise ValueError(f"--metrics: unknown metric(s) {bad}; choose from {','.join(METRICS)}")
        if args.data and not (Path(args.data) / "meta.json").exists():
            raise FileNotFoundError(f"--data: {Path(args.data) / 'meta.json'} not found: is {args.data} a "
                                    "`cmpo prepare` output dir?")
        model_specs = _pairs(args.models, "--models")
        logs = _pairs(args.logs, "--logs")
        pareto = [a.strip() for a in args.pareto.split(",")] if args.pareto else None
        out = Path(args.out)
        opts = {"model": args.judge_model, "base_url": args.judge_base_url, "concurrency": args.judge_concurrency}
        judge, judge_scorer = make_judge(args.judge, cache=args.judge_cache or out / "judge_cache.sqlite", **opts) \
            if "winrate" in metrics else (None, None)
        if args.scorer:
            _, scorer = make_judge(args.scorer)
            if scorer is None:
                raise ValueError("--scorer must be rules or apm:DIR")
        else:
            scorer = judge_scorer or RuleScorer()
        prompts = read_prompts(args.prompts) if args.prompts else None
        models = {n: EvalModel.load(n, s, dtype=args.dtype, device=args.device) for n, s in model_specs.items()}
        reference = None
        if args.reference:
            from cmpo.serve.generate import SteerableModel

            reference = SteerableModel.load(args.reference, dtype=args.dtype, device=args.device)
        results = evaluate(
            models, metrics, reference=reference, data=args.data, prompts=prompts, split=args.split,
            attributes=[a.strip() for a in args.attributes.split(",")] if args.attributes else None,
            judge=judge, scorer=scorer, num_prompts=args.num_prompts, max_pairs=args.max_pairs,
            max_rated=args.max_rated, seed=args.seed, max_new_tokens=args.max_new_tokens,
            repetition_penalty=args.repetition_penalty, batch_size=args.batch_size, pareto=pareto,
            pareto_grid=args.pareto_grid, pareto_prompts=args.pareto_prompts, logs=logs,
            perplexity=not args.no_perplexity, generation_batch_size=args.generation_batch_size)
        results["settings"]["models"] = model_specs
        paths = write_report(results, out)
    except (ValueError, OSError, KeyError) as e:
        print(f"cmpo eval: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {paths['metrics']} and {paths['report']} ({len(paths) - 2} plots)", file=sys.stderr)
    return 0
