"""The demo on a user's rated data: a seeded prompt sample, and the judge for attributes no rule rater measures.

``cmpo demo --data PATH --format F`` holds out a seeded sample of ``--heldout-prompts`` of the data's prompts (with
≥ 2 responses) and trains on ``--train-prompts`` more. ``--judge auto`` scores with the rule raters when they cover
every attribute, else with a SteerLM APM (frozen trunk, 5-class heads) trained on the training prompts' ratings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cmpo.demo.pipeline import DemoConfig


def sample_user_records(records: list, cfg: DemoConfig) -> tuple[list, set[str]]:
    """Seeded sample of a user's records with ≥ 2 responses: -> (held-out + train records, held-out ids)."""
    import random

    usable = sorted((r for r in records if len(r.responses) >= 2), key=lambda r: r.prompt_id)
    random.Random(cfg.seed).shuffle(usable)
    if len(usable) < cfg.heldout_prompts + 2:
        raise ValueError(f"{cfg.data}: {len(usable)} prompts have ≥ 2 responses; need more than "
                         f"--heldout-prompts {cfg.heldout_prompts}")
    held = usable[:cfg.heldout_prompts]
    kept = usable[:cfg.heldout_prompts + cfg.train_prompts]
    print(f"  {len(records)} prompts read, {len(usable)} with ≥ 2 responses; {len(held)} held out, "
          f"{len(kept) - len(held)} for training", file=sys.stderr)
    return kept, {r.prompt_id for r in held}


def demo_scorer(cfg: DemoConfig, data_dir: Path, out: Path):
    """The scorer ``cfg.judge`` names (``auto`` resolved here); see :func:`cmpo.eval.judges.make_judge`."""
    from cmpo.eval.judges import make_judge
    from cmpo.eval.raters import RULE_RATERS

    judge = cfg.judge
    if judge == "auto":
        judge = "rules" if all(a in RULE_RATERS for a in cfg.attributes) else f"apm:{auto_apm(cfg, data_dir, out)}"
        print(f"  judge: {judge}", file=sys.stderr)
    _, scorer = make_judge(judge)
    return scorer


def auto_apm(cfg: DemoConfig, data_dir: Path, out: Path) -> Path:
    """Train (or reuse) a frozen-trunk SteerLM APM on the training prompts' ratings: the judge for
    attributes no rule rater measures. Its held-out accuracy vs the majority class is in apm_metrics.json."""
    from cmpo.train.config import DataConfig, ModelConfig, TrainConfig
    from cmpo.train.steerlm_apm import METRICS_FILE, APMConfig, APMRunConfig, train_apm

    apm_dir = out / "eval" / "apm"
    if not (apm_dir / METRICS_FILE).exists():
        run = APMRunConfig(kind="steerlm-apm", model=ModelConfig(name=cfg.model),
                           data=DataConfig(max_length=224, max_prompt_length=96),
                           train=TrainConfig(learning_rate=3e-3, num_train_epochs=30, per_device_train_batch_size=32,
                                             per_device_eval_batch_size=32, eval_strategy="epoch",
                                             logging_steps=20, save_total_limit=1, seed=cfg.seed,
                                             output_dir=str(out / "eval" / "apm.checkpoints")),
                           apm=APMConfig(trunk="frozen"))
        train_apm(run, data_dir, apm_dir)
    metrics = json.loads((apm_dir / METRICS_FILE).read_text()).get("validation", {})
    for attr, m in metrics.items():
        if isinstance(m, dict) and "accuracy" in m:
            print(f"  APM {attr}: held-out accuracy {m['accuracy']:.2f} (majority class "
                  f"{m.get('majority_accuracy', float('nan')):.2f})", file=sys.stderr)
    return apm_dir
