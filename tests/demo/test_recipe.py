"""recipes/demo.yaml is the demo's training configuration, not a copy that can drift."""

from dataclasses import asdict
from pathlib import Path

from cmpo.demo.pipeline import DemoConfig, demo_run_config
from cmpo.train.config import load_run_config

REPO = Path(__file__).resolve().parents[2]


def test_demo_recipe_equals_the_demo_settings(tmp_path):
    overrides = [f"data.path={tmp_path}", f"negatives.prompts={tmp_path / 'unlabelled_prompts.jsonl'}"]
    from_recipe = asdict(load_run_config(str(REPO / "recipes" / "demo.yaml"), overrides))
    from_demo = asdict(demo_run_config(DemoConfig(seed=0), tmp_path))
    assert from_recipe == from_demo


def test_cpu_cmpo_recipe_loads_with_the_steering_setting():
    cfg = load_run_config(str(REPO / "recipes" / "cpu-smollm2-cmpo.yaml"), [])
    assert (cfg.model.adapter, cfg.warm_start.enabled, cfg.loss.epsilon, cfg.negatives.rounds) == ("plural", True, 0.0, 1)
