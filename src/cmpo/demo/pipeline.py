"""``cmpo demo``: the offline end-to-end run that shows (or refutes) steering, in minutes on a CPU.

Stages (each writes its artifact atomically under ``--out`` and is skipped when rerun, so an interrupted
demo resumes from the last finished stage):

  1. candidates  the default model samples responses to the built-in train and held-out prompts under style
                 instructions (candidates.jsonl)
  2. feedback    rule raters score every response on each attribute, 0–4 (feedback.jsonl, generic format)
  3. prepare     λ-conditioned pairs, powerset scheme; held-out prompts form the validation split (data/)
  4. train       CMPO on the plural model (plural SFT warm start, then DPO), reference = the default model
  5. evaluate    effect matrix on the held-out prompts plus the built-in evaluation-only ones, Pareto sweep on
                 the held-out prompts, conditioned preference accuracy on the held-out pairs (eval/)
  6. report      report.html + metrics.json + a terminal summary

``cmpo demo --data PATH --format oasst1 [--attributes ...]`` replaces stages 1–2 with a user's dataset: a
seeded sample of ``--heldout-prompts`` of its prompts (with ≥ 2 responses) is held out, ``--train-prompts`` more
train. The default judge (``auto``) uses the rule raters when they cover every attribute, else trains a SteerLM
APM (frozen trunk, 5-class heads) on the training prompts' ratings and scores with it (``eval/apm``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

UNLABELLED_PROMPTS = "unlabelled_prompts.jsonl"  # in the demo's data dir
STAGES = ("candidates", "feedback", "prepare", "train", "evaluate", "report")
DEMO_ATTRIBUTES = ["conciseness", "structure", "enthusiasm"]


@dataclass
class DemoConfig:
    model: str = "smollm2-135m"
    attributes: list[str] = field(default_factory=lambda: list(DEMO_ATTRIBUTES))
    seed: int = 0
    threads: int | None = None
    # candidates (synthetic feedback)
    train_prompts: int = 80
    heldout_prompts: int = 20
    styles: list[str] = field(default_factory=lambda: ["plain", "concise", "list", "enthusiastic"])
    temperatures: list[float] = field(default_factory=lambda: [0.8])
    max_new_tokens: int = 80
    gen_batch_size: int = 50
    # user data instead of candidates
    data: str | None = None
    format: str | None = None
    judge: str = "auto"  # auto | rules | apm:DIR (scores the attributes during evaluation)
    # prepare: rank each (prompt, condition)'s pairs by margin on S − ρ·margin elsewhere (cmpo.data.pairs)
    pair_off_target_penalty: float = 0.5
    # training (see recipes/demo.yaml for the same settings as a recipe)
    train_overrides: list[str] = field(default_factory=list)
    unlabelled_prompts: int = 50  # built-in prompts used neither for training nor evaluation, searched (with the
    # training prompts) for on-policy negatives when the recipe enables them
    # evaluation
    pareto: list[str] = field(default_factory=lambda: ["conciseness", "enthusiasm"])
    pareto_grid: int = 5  # the sweep runs on the held-out prompts only
    eval_prompts: int = 20  # built-in evaluation-only prompts (of 60) the effect matrix adds to the held-out ones
    eval_batch_size: int = 24
    eval_generation_batch_size: int = 60  # the effect matrix's and Pareto sweep's conditions share batches
    repetition_penalty: float = 1.0  # greedy decoding in evaluation (reference and every condition alike)
    max_eval_pairs: int = 32  # held-out pairs per attribute for conditioned preference accuracy

    @classmethod
    def quick(cls, **kw) -> DemoConfig:
        cfg = cls(train_prompts=20, heldout_prompts=6, max_new_tokens=48, pareto_grid=3, max_eval_pairs=12,
                  unlabelled_prompts=8, eval_prompts=6, **kw)
        cfg.train_overrides = (["warm_start.max_steps=6", "train.max_steps=6", "negatives.max_steps=4"]
                               + cfg.train_overrides)
        return cfg

    def fingerprint(self, upto: str) -> str:
        """Hash of the settings that affect stages up to ``upto`` (a changed setting invalidates them)."""
        from cmpo.demo.feedback import STYLE_INSTRUCTIONS

        d = asdict(self)
        d.pop("threads")
        d["style_instructions"] = [STYLE_INSTRUCTIONS.get(s) for s in self.styles]  # their wording shapes the data
        keys = {"candidates": ["model", "seed", "train_prompts", "heldout_prompts", "styles", "style_instructions",
                               "temperatures", "max_new_tokens", "data", "format"],
                "feedback": ["attributes"], "prepare": ["pair_off_target_penalty"],
                "train": ["train_overrides", "unlabelled_prompts"],
                "evaluate": ["pareto", "pareto_grid", "judge", "max_eval_pairs", "repetition_penalty",
                             "eval_generation_batch_size", "eval_prompts"], "report": []}
        used = [k for s in STAGES[: STAGES.index(upto) + 1] for k in keys[s]]
        return hashlib.sha256(json.dumps({k: d[k] for k in used}, sort_keys=True).encode()).hexdigest()[:16]


def demo_run_config(cfg: DemoConfig, data_dir: Path):
    """The CMPO training settings the demo uses (the best measured setting; docs/steerability.md)."""
    from cmpo.recipes import apply_overrides
    from cmpo.train.config import RunConfig, load_run_config

    # Setting Q of docs/steerability.md: λ-mixed ("plural") adapters on the top 8 layers with the frozen
    # prefix cached; plural SFT warm start on responses high on their attribute only (off-target penalty 1.0);
    # then plain DPO (ε = 0) with a chosen-NLL term (RPO α = 1) for 60 steps at a moderate LR (= setting N);
    # then one round of on-policy negatives (20 steps) against the greedy loops N falls into under structure.
    # The DPO pairs are picked with the pair off-target penalty (DemoConfig.pair_off_target_penalty). cDPO
    # (ε = 0.1) after the warm start pulls the margins back to its cap and undid the steering (setting F).
    base = {
        "kind": "cmpo",
        "model": {"name": cfg.model, "head_mode": "lowrank", "head_rank": 8, "head_alpha": 8,
                  "adapter": "plural", "lora_rank": 8, "lora_alpha": 16, "adapter_layers": 8,
                  "prefix_cache": True},
        "data": {"path": str(data_dir), "max_length": 224, "max_prompt_length": 96},
        "loss": {"beta": 0.5, "epsilon": 0.0, "loss_type": "sigmoid", "chosen_nll_weight": 1.0},
        "reference": {"precompute": True},
        "warm_start": {"enabled": True, "top_fraction": 0.25, "learning_rate": 1e-3, "max_steps": 80,
                       "off_target_penalty": 1.0},
        "train": {"learning_rate": 2e-4, "max_steps": 60, "per_device_train_batch_size": 4,
                  "logging_steps": 2, "save_strategy": "no", "seed": cfg.seed, "weight_decay": 0.01},
        "negatives": {"rounds": 1, "prompts": None if cfg.data else str(data_dir / UNLABELLED_PROMPTS),
                      "max_new_tokens": 48, "batch_size": 64, "sample_batch_size": 16, "max_steps": 20},
    }
    del RunConfig
    recipe = apply_overrides(base, cfg.train_overrides)
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(recipe, f)
    try:
        return load_run_config(f.name, [])
    finally:
        os.unlink(f.name)


# --------------------------------------------------------------------------- stage bookkeeping


class StageLog:
    """``state.json`` in the output dir: which stages finished, under which settings fingerprint."""

    def __init__(self, out: Path, cfg: DemoConfig):
        self.out, self.cfg = out, cfg
        self.path = out / "state.json"
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def done(self, stage: str) -> bool:
        rec = self.state["stages"].get(stage)
        return bool(rec) and rec.get("fingerprint") == self.cfg.fingerprint(stage)

    def finish(self, stage: str, seconds: float, **info) -> None:
        self.state["stages"][stage] = {"fingerprint": self.cfg.fingerprint(stage), "seconds": round(seconds, 1),
                                       **info}
        # a re-run stage invalidates everything after it
        for later in STAGES[STAGES.index(stage) + 1:]:
            self.state["stages"].pop(later, None)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.path)


def _banner(i: int, stage: str, text: str) -> None:
    print(f"\n[{i}/{len(STAGES)}] {stage}: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the pipeline


def run_demo(cfg: DemoConfig, out: str | Path) -> dict:
    import datasets
    import torch

    datasets.disable_progress_bars()  # one bar per stage is enough; dataset saves are instant here
    from cmpo.demo import feedback as fb
    from cmpo.io import write_jsonl

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = StageLog(out, cfg)
    timings: dict[str, float] = {}
    user_data = cfg.data is not None
    prompts = fb.split_prompts(cfg.train_prompts, cfg.heldout_prompts, cfg.seed)
    base = None

    def base_model():
        nonlocal base
        if base is None:
            from cmpo.serve.generate import SteerableModel

            base = SteerableModel.load(cfg.model)
        return base

    # 1. candidates -------------------------------------------------------------------------------
    cand_path = out / "candidates.jsonl"
    _banner(1, "candidates", "user data" if user_data else
            f"{len(prompts.train) + len(prompts.heldout)} prompts × {len(cfg.styles)} styles from {cfg.model}")
    if user_data:
        timings["candidates"] = 0.0
    elif stages.done("candidates") and cand_path.exists():
        print("  done earlier, reusing", file=sys.stderr)
    else:
        t = time.time()
        rows = _sample_candidates(base_model(), prompts.train + prompts.heldout, cfg)
        write_jsonl(rows, cand_path)
        timings["candidates"] = time.time() - t
        stages.finish("candidates", timings["candidates"], rows=len(rows))

    # 2. feedback ---------------------------------------------------------------------------------
    fb_path = out / "feedback.jsonl"
    _banner(2, "feedback", f"rule raters score {', '.join(cfg.attributes)} (0–4)")
    if user_data:
        pass
    elif stages.done("feedback") and fb_path.exists():
        print("  done earlier, reusing", file=sys.stderr)
    else:
        t = time.time()
        rated = fb.rate_candidates(fb.read_jsonl(cand_path), cfg.attributes)
        write_jsonl(rated, fb_path)
        timings["feedback"] = time.time() - t
        stages.finish("feedback", timings["feedback"], prompts=len(rated))
        _print_feedback_summary(rated, cfg.attributes)

    # 3. prepare ----------------------------------------------------------------------------------
    data_dir = out / "data"
    _banner(3, "prepare", "per-attribute pairs → powerset λ-conditioned pairs")
    if stages.done("prepare") and (data_dir / "meta.json").exists():
        print("  done earlier, reusing", file=sys.stderr)
    else:
        t = time.time()
        stats = _prepare(cfg, fb_path, data_dir, prompts.heldout, base_model().tokenizer)
        timings["prepare"] = time.time() - t
        stages.finish("prepare", timings["prepare"], counts=stats.get("final_counts"))

    if user_data:  # the format's attributes (default: its usual set), in λ index order
        cfg.attributes = json.loads((data_dir / "meta.json").read_text())["attributes"]
        if cfg.pareto and any(a not in cfg.attributes for a in cfg.pareto):
            cfg.pareto = cfg.attributes[:2] if len(cfg.attributes) >= 2 else []

    # 4. train ------------------------------------------------------------------------------------
    model_dir = out / "model"
    if not user_data:  # built-in prompts used neither for training nor evaluation: searched for on-policy negatives
        write_jsonl([{"prompt": p} for p in prompts.unused[:cfg.unlabelled_prompts]], data_dir / UNLABELLED_PROMPTS)
    run_cfg = demo_run_config(cfg, data_dir)
    loss = run_cfg.loss
    loss_name = "IPO" if loss.loss_type == "ipo" else (f"cDPO ε={loss.epsilon}" if loss.epsilon else "DPO")
    neg = run_cfg.negatives
    rounds = f" + {neg.rounds} round(s) of on-policy negatives ({neg.max_steps} steps)" if neg.rounds else ""
    _banner(4, "train", f"plural SFT warm start ({run_cfg.warm_start.max_steps} steps) + CMPO {loss_name} "
            f"({run_cfg.train.max_steps} steps){rounds}, adapter={run_cfg.model.adapter}, "
            f"heads={run_cfg.model.head_mode}")
    if stages.done("train") and (model_dir / "cmpo_config.json").exists():
        print("  done earlier, reusing", file=sys.stderr)
    else:
        from cmpo.train.runs import run_cmpo

        t = time.time()
        result = run_cmpo(run_cfg, data_dir, model_dir)
        timings["train"] = time.time() - t
        (out / "train").mkdir(exist_ok=True)  # the trainer-state layout cmpo eval reads curves from
        (out / "train" / "trainer_state.json").write_text(json.dumps({"log_history": result.log_history}))
        stages.finish("train", timings["train"], negatives=result.negatives)

    # 5. evaluate ---------------------------------------------------------------------------------
    metrics_path = out / "eval" / "results.json"
    _banner(5, "evaluate", "effect matrix on held-out + evaluation-only prompts, Pareto sweep, preference accuracy")
    if stages.done("evaluate") and metrics_path.exists():
        print("  done earlier, reusing", file=sys.stderr)
        results = json.loads(metrics_path.read_text())
    else:
        t = time.time()
        results = _evaluate(cfg, model_dir, data_dir, out)
        timings["evaluate"] = time.time() - t
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = metrics_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=float))
        os.replace(tmp, metrics_path)
        stages.finish("evaluate", timings["evaluate"])

    # 6. report -----------------------------------------------------------------------------------
    _banner(6, "report", "metrics.json, plots, report.html")
    from cmpo.eval.report import write_report

    results["settings"]["demo"] = {**asdict(cfg), "stage_seconds": {
        s: rec.get("seconds") for s, rec in stages.state["stages"].items()}}
    paths = write_report(results, out)
    stages.finish("report", 0.0)
    summary = summarize(results, cfg)
    print(summary, file=sys.stderr)
    print(f"\nreport: {paths['report'].resolve()}", file=sys.stderr)
    return {"results": results, "paths": {k: str(v) for k, v in paths.items()}}


def _sample_candidates(model, prompts: list[str], cfg: DemoConfig) -> list[dict]:
    from cmpo.demo.feedback import sample_candidates

    return sample_candidates(model, prompts, cfg.styles, cfg.temperatures, cfg.max_new_tokens, cfg.seed,
                             batch_size=cfg.gen_batch_size)


def _print_feedback_summary(rated: list[dict], attributes: list[str]) -> None:
    import numpy as np

    by_style: dict[str, list[dict]] = {}
    for g in rated:
        for style, r in zip(g["styles"], g["ratings"]):
            by_style.setdefault(style, []).append(r)
    print("  mean rating by style instruction:", file=sys.stderr)
    print("  " + "style".ljust(14) + "".join(a[:12].rjust(13) for a in attributes), file=sys.stderr)
    for style, rs in by_style.items():
        print("  " + style.ljust(14) + "".join(f"{np.mean([r[a] for r in rs]):13.2f}" for a in attributes),
              file=sys.stderr)


def _prepare(cfg: DemoConfig, fb_path: Path, data_dir: Path, heldout: list[str], tokenizer) -> dict:
    from cmpo.data.prepare import prepare, summary
    from cmpo.data.records import Record
    from cmpo.data.templates import PromptTemplate

    template = PromptTemplate.resolve("auto", tokenizer)
    if cfg.data is not None:
        from cmpo.data.formats import read
        from cmpo.demo.user_data import sample_user_records

        records, attributes = read(cfg.format, cfg.data, cfg.attributes or None)
        records, heldout_ids = sample_user_records(records, cfg)
    else:
        from cmpo.demo.feedback import read_jsonl

        records = [Record.from_ratings(g["prompt"], g["responses"], g["ratings"], cfg.attributes,
                                       source=f"{fb_path}:{i + 1}", finished=g.get("finished"))
                   for i, g in enumerate(read_jsonl(fb_path))]
        held = {Record.from_ratings(p, ["x"], [{}], cfg.attributes).prompt_id for p in heldout}
        heldout_ids = held
        attributes = cfg.attributes
    prepared = prepare(records, attributes, "powerset", template, max_length_sft=512, max_length_pairs=512,
                       seed=cfg.seed, off_target_penalty=cfg.pair_off_target_penalty,
                       validation_prompt_ids=heldout_ids,
                       source={"demo": True, "data": cfg.data, "format": cfg.format})
    prepared.save(data_dir, overwrite=True)
    print(summary(prepared.stats, prepared.meta), file=sys.stderr)
    return prepared.stats


def _evaluate(cfg: DemoConfig, model_dir: Path, data_dir: Path, out: Path) -> dict:
    from cmpo.demo import feedback as fb
    from cmpo.demo.user_data import demo_scorer
    from cmpo.eval.cli import evaluate, load_prepared
    from cmpo.eval.metrics import EvalModel

    scorer = demo_scorer(cfg, data_dir, out)
    em = EvalModel.load("cmpo", str(model_dir))
    meta, splits = load_prepared(data_dir)
    heldout = [row["prompt"] for row in unique_prompts(splits["sft"]["validation"])]
    prompts = heldout + ([] if cfg.data else fb.eval_only_prompts(cfg.eval_prompts))
    metrics = ["accuracy", "steerability"] + (["pareto"] if cfg.pareto and all(scorer.supports(a)
                                                                                 for a in cfg.pareto) else [])
    results = evaluate({"cmpo": em}, metrics, data=str(data_dir), prompts=prompts, scorer=scorer,
                       num_prompts=len(prompts), pareto_prompts=len(heldout), max_pairs=cfg.max_eval_pairs,
                       seed=cfg.seed, max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty,
                       batch_size=cfg.eval_batch_size, generation_batch_size=cfg.eval_generation_batch_size,
                       pareto=cfg.pareto, pareto_grid=cfg.pareto_grid,
                       logs={"cmpo": str(out / "train")} if (out / "train" / "trainer_state.json").exists()
                       else None, perplexity=True, progress=True, generations_path=out / "eval" / "generations.jsonl")
    results["examples"] = _examples(em, prompts[0], out / "eval" / "generations.jsonl")
    return results


def unique_prompts(ds) -> list[dict]:
    """The first row of each ``prompt_id``, in order (the held-out prompts of a prepared ``sft`` split)."""
    seen, rows = set(), []
    for row in ds:
        if row["prompt_id"] not in seen:
            seen.add(row["prompt_id"])
            rows.append(row)
    return rows


def _examples(em, prompt, generations: Path) -> list[dict]:
    """The reference's and each one-hot λ's greedy output for one held-out prompt, read from the evaluation's
    generations (the very outputs the effect matrix rated)."""
    from cmpo.demo.feedback import read_jsonl
    from cmpo.eval.metrics import single_attribute_condition

    model = em.models[None]
    wanted = {"reference": "reference"} | {single_attribute_condition(model, a).describe(): f"{a}=1"
                                            for a in model.attributes}
    found = {r["condition"]: r["response"] for r in read_jsonl(generations)
             if r["prompt"] == prompt and r["condition"] in wanted}
    text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
    return [{"prompt": text, "condition": name, "text": found[cond]} for cond, name in wanted.items()
            if cond in found]


def summarize(results: dict, cfg: DemoConfig) -> str:
    """Terminal summary: the effect matrix, whether each attribute steers, quality guards, accuracy."""
    st = (results.get("steerability") or {}).get("cmpo")
    scorer = {"rules": "rule-rated", "apm": "APM-rated"}.get((st or {}).get("scorer"), "rated")
    lines = ["", "=" * 72, f"Can the model be steered?  (prompts never trained on, {scorer}, Δ vs reference)", "=" * 72]
    if st:
        attrs = st["attributes"]
        eff, lo, hi = st["effect"], st["ci95_low"], st["ci95_high"]
        lines.append("condition".ljust(16) + "".join(a[:14].rjust(16) for a in attrs) + "   steers?")
        for i, a in enumerate(attrs):
            cells = "".join(f"{eff[i][j]:+7.2f} [{lo[i][j]:+.1f},{hi[i][j]:+.1f}]".rjust(16) for j in range(len(attrs)))
            ok = eff[i][i] > 0 and lo[i][i] > 0 and st["diagonal_beats_row"][i]
            lines.append(f"{a}=1".ljust(16) + cells + ("   yes" if ok else "   no"))
        lines.append(f"diagonal mean {st['diagonal_mean']:+.2f}, off-diagonal mean {st['off_diagonal_mean']:+.2f}, "
                     f"{st['n_prompts']} prompts, seed {cfg.seed}")
        g = st.get("guards", {})
        lines.append("quality guards (finished / degenerate / median reference perplexity): " + "; ".join(
            f"{name} {v.get('finished', float('nan')):.2f} / {v.get('degenerate', float('nan')):.2f} / "
            f"{v.get('reference_perplexity_median', v.get('reference_perplexity', float('nan'))):.1f}"
            for name, v in g.items()))
    acc = (results.get("accuracy") or {}).get("cmpo")
    if acc:
        parts = [f"{a} {v['policy']['accuracy']:.2f} (n={v['policy']['n']})" for a, v in acc.items()
                 if isinstance(v, dict) and "policy" in v]
        if parts:
            lines.append("conditioned preference accuracy (held-out pairs): " + ", ".join(parts))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (resumes if it exists)")
    parser.add_argument("--quick", action="store_true", help="the same pipeline, smaller (≤ 4 min on 2 cores)")
    parser.add_argument("--fresh", action="store_true", help="ignore finished stages in --out and redo all")
    parser.add_argument("--model", default="smollm2-135m", help="base model (short name, HF id or dir)")
    parser.add_argument("--attributes", help=f"comma-separated attributes (default {','.join(DEMO_ATTRIBUTES)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--train-prompts", type=int, help="built-in prompts used for training feedback")
    parser.add_argument("--heldout-prompts", type=int, help="built-in prompts held out for evaluation")
    parser.add_argument("--eval-prompts", type=int, help="built-in evaluation-only prompts the effect matrix adds "
                        f"to the held-out ones (default {DemoConfig.eval_prompts}; not with --data)")
    parser.add_argument("--max-new-tokens", type=int, help="token budget for candidates and evaluation")
    parser.add_argument("--data", help="use a real dataset instead of the synthetic feedback (with --format)")
    parser.add_argument("--format", help="format of --data (see `cmpo prepare --help`)")
    parser.add_argument("--judge", default="auto",
                        help="auto | rules | apm:DIR: scores attributes in evaluation (auto: rules when they "
                             "cover the attributes, else an APM trained on the training prompts)")
    parser.add_argument("--pareto", help="two attributes for the Pareto sweep (default conciseness,enthusiasm)")
    parser.add_argument("--pair-off-target-penalty", type=float, default=None, metavar="RHO",
                        help="rank each prompt's pairs for condition S by margin on S − RHO × margin elsewhere "
                             f"(default {DemoConfig.pair_off_target_penalty}; 0 = the thesis's net margin)")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="repetition penalty of the evaluation's greedy decoding, applied to the reference and "
                             f"every condition alike (default {DemoConfig.repetition_penalty}; 1 = plain greedy)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="training recipe overrides, e.g. train.max_steps=60 model.adapter=shared")


def config_from_args(args) -> DemoConfig:
    kw = {"model": args.model, "seed": args.seed, "threads": args.threads, "data": args.data,
          "format": args.format, "judge": args.judge, "train_overrides": list(args.overrides)}
    if args.attributes:
        kw["attributes"] = [a.strip() for a in args.attributes.split(",") if a.strip()]
    elif args.data:
        kw["attributes"] = []  # the format's usual attributes, read with the data
    if args.pareto:
        kw["pareto"] = [a.strip() for a in args.pareto.split(",")]
    cfg = DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw)
    for name in ("train_prompts", "heldout_prompts", "eval_prompts", "max_new_tokens", "pair_off_target_penalty",
                 "repetition_penalty"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if cfg.data and not cfg.format:
        raise ValueError("--data needs --format")
    if cfg.data and args.eval_prompts is not None:
        raise ValueError("--eval-prompts adds built-in prompts; with --data the held-out prompts are the data's")
    if cfg.attributes and cfg.pareto and any(a not in cfg.attributes for a in cfg.pareto):
        cfg.pareto = cfg.attributes[:2] if len(cfg.attributes) >= 2 else []
    return cfg


def run(args) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"cmpo demo: error: {e}", file=sys.stderr)
        return 2
    if args.fresh and (Path(args.out) / "state.json").exists():
        (Path(args.out) / "state.json").unlink()
    t = time.time()
    run_demo(cfg, args.out)
    print(f"total {time.time() - t:.0f} s", file=sys.stderr)
    return 0
