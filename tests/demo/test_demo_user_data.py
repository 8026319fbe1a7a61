"""`cmpo demo --data … --format oasst1`: the same pipeline on real rated data, judged by an auto-trained APM.

Runs on the tiny random model (the pipeline's plumbing, not its numbers, is under test here).
"""

from __future__ import annotations

import json
import math

import pytest

from cmpo.demo.pipeline import DemoConfig, run_demo
from cmpo.demo.user_data import sample_user_records


def test_user_records_are_a_seeded_disjoint_sample(shared_data):
    from cmpo.data.formats import read

    records, _ = read("oasst1", str(shared_data / "oasst1" / "oasst1_en_validation.jsonl"))
    cfg = DemoConfig(data="x", format="oasst1", train_prompts=30, heldout_prompts=10, seed=3)
    kept, held = sample_user_records(records, cfg)
    assert len(kept) == 40 and len(held) == 10 and all(len(r.responses) >= 2 for r in kept)
    assert held == {r.prompt_id for r in kept[:10]}
    assert sample_user_records(records, cfg)[1] == held  # same seed, same split
    assert sample_user_records(records, DemoConfig(data="x", format="oasst1", train_prompts=30,
                                                    heldout_prompts=10, seed=4))[1] != held
    with pytest.raises(ValueError, match="have ≥ 2 responses"):
        sample_user_records(records[:5], cfg)


@pytest.mark.integration
def test_demo_on_oasst1_trains_an_apm_judge_and_reports_every_attribute(tmp_path, shared_data, tiny_model_dir):
    cfg = DemoConfig.quick(model=tiny_model_dir, data=str(shared_data / "oasst1" / "oasst1_en_validation.jsonl"),
                           format="oasst1", attributes=[], pareto=["quality", "humor"])
    cfg.train_overrides += ["model.adapter_layers=2", "data.max_length=128"]
    out = tmp_path / "demo"
    result = run_demo(cfg, out)
    attrs = ["quality", "humor", "toxicity", "creativity"]  # the format's usual set, λ order
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["attributes"] == attrs
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert stats["prompts_per_split"] == {"train": 20, "validation": 6}
    apm = json.loads((out / "eval" / "apm" / "apm_metrics.json").read_text())
    assert apm["attributes"] == attrs and apm["trunk"] == "frozen"
    metrics = result["results"]
    steer = metrics["steerability"]["cmpo"]
    assert steer["attributes"] == attrs and steer["scorer"].startswith("apm")
    assert len(steer["effect"]) == 4 and all(len(row) == 4 for row in steer["effect"])
    assert all(math.isfinite(v) for row in steer["effect"] for v in row)
    assert set(metrics["accuracy"]["cmpo"]) <= set(attrs) and metrics["accuracy"]["cmpo"]
    assert metrics["pareto"]["cmpo"]["attributes"] == ["quality", "humor"]
    assert (out / "report.html").exists()
