"""Every shipped recipe and accelerate config parses into its config (no typo'd keys)."""

from pathlib import Path

import pytest
import yaml

from cmpo.train.config import RunConfig, load_run_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith("steerlm-"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_builds(path):
    cfg = load_run_config(str(path), ["train.max_steps=1"])
    assert isinstance(cfg, RunConfig) and cfg.kind in ("sft", "dpo", "cmpo")
    assert cfg.train.max_steps == 1 and cfg.data.path
    assert cfg.model.head_mode in ("full", "lowrank") and cfg.model.adapter in ("shared", "plural", "none")


def test_recipes_cover_the_thesis_runs():
    names = {p.stem for p in RECIPES}
    for k in ("sft", "dpo", "cmpo"):
        assert {f"thesis-helpsteer-oasst-{k}", f"thesis-beavertails-{k}", f"cpu-smollm2-{k}"} <= names


@pytest.mark.parametrize("path", sorted((REPO / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_config_is_a_known_distributed_type(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["distributed_type"] in ("MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED")
    assert cfg["num_processes"] >= 2 and cfg.get("use_cpu") is False
