"""Recipes: YAML + key=value overrides -> dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cmpo.recipes import RecipeError, apply_overrides, build, load_recipe


@dataclass
class Inner:
    learning_rate: float = 5e-6
    attributes: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    train: Inner = field(default_factory=Inner)


def test_overrides_parse_yaml_values_and_exponents(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: run\ntrain:\n  learning_rate: 5e-6\n  attributes: [a, b]\n")
    recipe = load_recipe(path)
    assert recipe["train"]["learning_rate"] == 5e-6  # YAML 1.1 alone would give the string "5e-6"
    recipe = apply_overrides(recipe, ["train.learning_rate=1e-4", "train.attributes=c,d", "name=other"])
    cfg = build(Outer, recipe)
    assert cfg.train.learning_rate == 1e-4 and cfg.train.attributes == ["c", "d"] and cfg.name == "other"


def test_unknown_keys_are_errors():
    with pytest.raises(RecipeError, match="unknown key"):
        build(Outer, {"trian": {}})
    with pytest.raises(RecipeError, match="not key=value"):
        apply_overrides({}, ["oops"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
