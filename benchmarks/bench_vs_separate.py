"""One CMPO run vs k separate cDPO runs (one per attribute) on the same prepared data: total wall time.

    python benchmarks/bench_vs_separate.py --model smollm2-135m --threads 1 --k 3 --steps 2

Data: ``--prompts`` generated prompts × 4 responses with random 0–4 ratings on k attributes, through
``cmpo.data.prepare.prepare`` (scheme powerset, the model's chat template) and saved like ``cmpo prepare``.
Runs: ``run_cmpo`` once on ``conditioned/`` and ``run_dpo`` once per attribute on ``pairs/`` — the real
end-to-end code (model load, tokenization, Trainer, save), each limited to ``--steps`` optimizer steps of
``--batch`` pairs. The order alternates (CMPO first, then last) over ``--reps`` repetitions.

Measured per run: wall time, ``train_runtime`` (the Trainer's), overhead = wall − train_runtime.
Extrapolated to one epoch of each run's own data (same steps per pair):
``T = overhead + ceil(rows / batch) · train_runtime / steps``, and the ratio T_cmpo / Σ_a T_dpo(a)
(goal ≤ 1.2 / k). The directly measured ratio at equal step counts is printed too.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_arguments, emit, setup, versions

WORDS = ["the", "a", "model", "answer", "helpful", "clear", "short", "long", "detail", "list", "step", "example", "reason", "fact", "kind", "safe"]


def make_records(n_prompts: int, n_responses: int, k: int, seed: int):
    from cmpo.data.records import Record

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n_prompts):
        prompt = [{"role": "user", "content": " ".join(rng.choice(WORDS, 6)) + f" ({i})?"}]
        responses = [" ".join(rng.choice(WORDS, int(rng.integers(8, 16)))) + "." for _ in range(n_responses)]
        ratings = rng.integers(0, 5, (n_responses, k)).astype(np.float32)
        recs.append(Record(prompt, responses, ratings=ratings, prompt_id=f"{i:016x}"))
    return recs


def run_config(a, out_dir: Path):
    from cmpo.train.config import RunConfig

    cfg = RunConfig()
    cfg.model.name = a.model
    cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.eval_split = a.max_length, a.max_length // 2, None
    t = cfg.train
    t.output_dir = str(out_dir / "checkpoints")
    t.max_steps, t.per_device_train_batch_size = a.steps, a.batch
    t.save_strategy, t.logging_steps, t.disable_tqdm, t.learning_rate = "no", 10**6, True, 5e-6
    return cfg


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    res = fn(*args, **kwargs)
    wall = time.perf_counter() - t0
    runtime = next((h["train_runtime"] for h in reversed(res.log_history) if "train_runtime" in h), None)
    return wall, runtime


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per run (then extrapolated)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--reps", type=int, default=1)
    add_common_arguments(ap)
    a = ap.parse_args(argv)
    setup(a)
    import transformers

    transformers.logging.set_verbosity_error()
    from datasets import disable_progress_bars, load_from_disk

    disable_progress_bars()
    import peft  # noqa: F401
    import transformers.trainer

    import cmpo.train.trainers  # noqa: F401 - first-import cost must not land on whichever run goes first
    from cmpo.data.prepare import prepare
    from cmpo.data.templates import PromptTemplate
    from cmpo.models.loading import load_tokenizer
    from cmpo.train.runs import run_cmpo, run_dpo

    attrs = [f"attr{j}" for j in range(a.k)]
    with tempfile.TemporaryDirectory(prefix="cmpo-bench-sep-") as tmp:
        tmp = Path(tmp)
        template = PromptTemplate.resolve("auto", load_tokenizer(a.model))
        data = tmp / "data"
        prepare(make_records(a.prompts, 4, a.k, a.seed), attrs, "powerset", template,
                max_length_pairs=a.max_length, val_fraction=0.1, seed=a.seed).save(data)
        pairs = load_from_disk(str(data / "pairs"))["train"]
        n_attr = {x: int(sum(1 for v in pairs["attribute"] if v == x)) for x in attrs}
        n_cond = len(load_from_disk(str(data / "conditioned"))["train"])
        emit({"bench": "vs_separate", "kind": "setup", "model": a.model, "threads": a.threads, "k": a.k,
              "prompts": a.prompts, "steps_per_run": a.steps, "batch_pairs": a.batch, "max_length": a.max_length,
              "conditioned_rows": n_cond, "pairs_per_attribute": n_attr, "reps": a.reps, "versions": versions()})
        meas = {name: [] for name in ["cmpo", *attrs]}
        for r in range(a.reps):
            order = ["cmpo", *attrs] if r % 2 == 0 else [*attrs, "cmpo"]
            for name in order:
                cfg = run_config(a, tmp / f"run-{name}")
                if name == "cmpo":
                    wall, rt = timed(run_cmpo, cfg, data, tmp / f"out-{name}")
                else:
                    cfg.attribute = name
                    wall, rt = timed(run_dpo, cfg, data, tmp / f"out-{name}")
                meas[name].append((wall, rt))
                emit({"bench": "vs_separate", "kind": "run", "rep": r, "run": "cmpo" if name == "cmpo" else "dpo",
                      "attribute": None if name == "cmpo" else name, "wall_s": wall, "train_runtime_s": rt,
                      "overhead_s": wall - rt})

        def epoch_time(name, rows):
            wall = statistics.median(w for w, _ in meas[name])
            rt = statistics.median(t for _, t in meas[name])
            return (wall - rt) + math.ceil(rows / a.batch) * rt / a.steps, wall

        t_cmpo, w_cmpo = epoch_time("cmpo", n_cond)
        dpo = {x: epoch_time(x, n_attr[x]) for x in attrs}
        t_dpo = sum(v[0] for v in dpo.values())
        w_dpo = sum(v[1] for v in dpo.values())
        emit({"bench": "vs_separate", "kind": "summary", "k": a.k,
              "cmpo_epoch_s_extrapolated": t_cmpo, "dpo_total_epoch_s_extrapolated": t_dpo,
              "ratio_epoch": t_cmpo / t_dpo, "goal_ratio": 1.2 / a.k,
              "ratio_equal_steps": w_cmpo / w_dpo, "cmpo_wall_s": w_cmpo, "dpo_total_wall_s": w_dpo,
              "conditioned_rows": n_cond, "dpo_rows_total": sum(n_attr.values()),
              "rows_ratio": n_cond / max(1, sum(n_attr.values()))})


if __name__ == "__main__":
    main()
