"""The demo's built-in prompts, rule-rated feedback and stage bookkeeping."""

from __future__ import annotations

import json

import pytest

from cmpo.demo import feedback as fb
from cmpo.demo.pipeline import STAGES, DemoConfig, StageLog


def test_builtin_prompts_are_varied_and_unique():
    rows = fb.builtin_prompts()
    texts = [r["text"] for r in rows]
    assert 100 <= len(texts) <= 200 and len(set(texts)) == len(texts)
    assert {r["category"] for r in rows} >= {"question", "how-to", "creative"}


def test_eval_only_prompts_are_new_and_in_every_split():
    pool = {r["text"] for r in fb.builtin_prompts()}
    rows = fb.builtin_prompts("eval_prompts")
    texts = [r["text"] for r in rows]
    assert len(texts) == 60 and len(set(texts)) == 60 and not set(texts) & pool
    assert {r["category"] for r in rows} == {r["category"] for r in fb.builtin_prompts()}
    first = [r["category"] for r in rows[:40]]  # the demo's default takes a prefix: categories in turn
    assert all(first.count(c) >= 8 for c in set(first)) and first[:4] == ["question", "how-to", "creative", "advice"]
    assert [p[0]["content"] for p in fb.eval_only_prompts(60)] == texts  # the same in every seed


def test_eval_prompts_setting_is_checked_and_refused_with_user_data():
    import argparse

    from cmpo.demo.pipeline import add_arguments, config_from_args

    assert fb.eval_only_prompts(2) == [[{"role": "user", "content": t["text"]}]
                                    for t in fb.builtin_prompts("eval_prompts")[:2]]
    assert fb.eval_only_prompts(0) == []
    with pytest.raises(ValueError, match="between 0 and 60"):
        fb.eval_only_prompts(61)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--eval-prompts", "10"])).eval_prompts == 10
    with pytest.raises(ValueError, match="--eval-prompts"):
        config_from_args(parser.parse_args(["--data", "x.jsonl", "--format", "oasst1", "--eval-prompts", "10"]))


def test_split_is_seeded_disjoint_and_balanced():
    a, b = fb.split_prompts(96, 24, seed=0), fb.split_prompts(96, 24, seed=0)
    assert a == b and len(a.train) == 96 and len(a.heldout) == 24
    assert not set(a.train) & set(a.heldout)
    # the rest of the pool, used by neither (the demo searches it for on-policy negatives)
    assert sorted(a.train + a.heldout + a.unused) == sorted(r["text"] for r in fb.builtin_prompts())
    cats = {r["text"]: r["category"] for r in fb.builtin_prompts()}
    assert len({cats[t] for t in a.heldout}) == 4  # every category is held out
    assert fb.split_prompts(96, 24, seed=1).heldout != a.heldout
    with pytest.raises(ValueError, match="built in"):
        fb.split_prompts(200, 10)


def test_rate_candidates_groups_by_prompt_and_rates_by_rule():
    rows = [
        {"prompt": "p", "style": "plain", "response": "Sure! Great! Wow!", "finished": True},
        {"prompt": "p", "style": "list", "response": "- a\n- b\n- c", "finished": True},
        {"prompt": "p", "style": "concise", "response": "- a\n- b\n- c", "finished": True},  # duplicate
        {"prompt": "p", "style": "x", "response": "", "finished": True},  # empty
        {"prompt": "q", "style": "plain", "response": "only one", "finished": False},
    ]
    out = fb.rate_candidates(rows, ["enthusiasm", "structure", "conciseness"])
    assert len(out) == 1  # q has a single response: no pairs possible
    g = out[0]
    assert g["responses"] == ["Sure! Great! Wow!", "- a\n- b\n- c"]
    assert g["ratings"][0] == {"enthusiasm": 3.0, "structure": 0.0, "conciseness": 4.0}
    assert g["ratings"][1] == {"enthusiasm": 0.0, "structure": 3.0, "conciseness": 4.0}


def test_styled_prompt_appends_instruction_in_user_turn():
    assert fb.styled_prompt("Why?", "plain") == "Why?"
    assert fb.styled_prompt("Why?", "list").startswith("Why?\n\n") and "list" in fb.styled_prompt("Why?", "list")


def test_stage_log_resumes_and_invalidates_later_stages(tmp_path):
    cfg = DemoConfig()
    log = StageLog(tmp_path, cfg)
    for stage in STAGES[:4]:
        log.finish(stage, 1.0)
    again = StageLog(tmp_path, cfg)
    assert all(again.done(s) for s in STAGES[:4]) and not again.done("evaluate")
    # changing a training setting invalidates train (and later) but not the data stages
    changed = DemoConfig(train_overrides=["train.max_steps=99"])
    log2 = StageLog(tmp_path, changed)
    assert log2.done("prepare") and not log2.done("train")
    # re-running a stage drops the stages after it
    log2.finish("feedback", 1.0)
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state["stages"]) == {"candidates", "feedback"}


def test_quick_config_is_smaller():
    q, full = DemoConfig.quick(), DemoConfig()
    assert q.train_prompts < full.train_prompts and q.heldout_prompts < full.heldout_prompts
    assert any(o.startswith("train.max_steps=") for o in q.train_overrides)


def test_evaluation_repetition_penalty_invalidates_only_evaluation(tmp_path):
    import argparse

    from cmpo.demo.pipeline import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--repetition-penalty", "1.2"]))
    assert cfg.repetition_penalty == 1.2
    assert config_from_args(parser.parse_args([])).repetition_penalty == DemoConfig.repetition_penalty
    log = StageLog(tmp_path, DemoConfig(repetition_penalty=1.0))
    for stage in STAGES[:5]:
        log.finish(stage, 1.0)
    again = StageLog(tmp_path, cfg)
    assert all(again.done(s) for s in STAGES[:4]) and not again.done("evaluate")
