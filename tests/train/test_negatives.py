"""On-policy negatives: which rows are one-hot, replay sampling, and a round that trains against its finds."""

import pytest
import torch

from cmpo.data.quality import is_degenerate
from cmpo.train import runs
from cmpo.train.config import RunConfig
from cmpo.train.negatives import find_negatives, one_hot_rows, read_prompts, with_replay


def test_one_hot_rows_picks_exact_single_attribute_conditions():
    w = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 1.0], [2.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]
    assert one_hot_rows(w, 2) == {0: [0, 6], 1: [1, 3]}


def test_with_replay_adds_that_many_distinct_original_rows():
    rows = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r", "weights": [1.0]} for i in range(10)]
    neg = [{"prompt": f"n{i}"} for i in range(3)]
    out = with_replay(neg, rows, 1.0, seed=0)
    assert out[:3] == neg and len(out) == 6 and len({r["prompt"] for r in out[3:]}) == 3
    assert all(r["chosen_finished"] is True and r["rejected_finished"] is True for r in out[3:])  # default
    assert len(with_replay(neg, rows, 10.0, seed=0)) == 3 + 10  # capped at every original row
    assert with_replay(neg, rows, 0.0, seed=0) == neg
    assert with_replay(neg, rows, 1.0, seed=0) == out  # reproducible
    with pytest.raises(ValueError, match="replay"):
        with_replay(neg, rows, -1.0, seed=0)


class _Scripted:
    """A stand-in SteerableModel: greedy outputs looked up by (prompt text, λ), sampled ones popped from a list
    per (prompt text, λ), the reference's by prompt text."""

    def __init__(self, greedy, sampled=None, reference=None):
        self.greedy, self.sampled, self.ref_outputs, self.is_reference = greedy, sampled or {}, reference, False

    def encode_prompt(self, prompt):
        return prompt[-1]["content"]

    def reference(self):
        ref = _Scripted(self.ref_outputs)
        ref.is_reference = True
        return ref

    def generate_rows(self, rows, options):
        for r in rows:
            if self.is_reference:
                out = self.greedy[r.prompt_ids]
            elif options.do_sample:
                out = self.sampled[r.prompt_ids, tuple(r.weights)].pop(0)
            else:
                out = self.greedy.get((r.prompt_ids, tuple(r.weights)), ("A fine and ordinary answer here.", "stop"))
            r.text, r.finish_reason = out
        return rows


def test_find_negatives_pairs_each_degenerate_output_with_the_right_chosen():
    def conv(t):
        return [{"role": "user", "content": t}]

    from datasets import Dataset

    rows = Dataset.from_list([
        {"prompt": conv("a"), "chosen": "1. x\n2. y", "rejected": "x and y", "weights": [0.0, 1.0],
         "chosen_finished": True},
        {"prompt": conv("b"), "chosen": "Short.", "rejected": "Long one.", "weights": [1.0, 0.0],
         "chosen_finished": False},
        {"prompt": conv("b"), "chosen": "B mixed", "rejected": "b", "weights": [0.5, 0.5], "chosen_finished": True},
    ])
    loop, bad = ("1.1.1.1.1.1.1.1.1.1", "length"), ("2 2 2 2", "stop")
    s = (0.0, 1.0)
    greedy = {("a", s): loop,  # labelled: chosen = the e_1 pair's chosen
              ("b", s): loop,  # b has no e_1 pair: chosen = its first non-degenerate sample
              ("c", s): loop,  # unlabelled, every sample and the reference degenerate: no pair
              ("d", s): loop,  # unlabelled, every sample degenerate: chosen = the reference's output
              ("c", (1.0, 0.0)): ("", "stop")}  # empty: counted, no tokens to push down
    sampled = {("b", s): [loop, ("1. Tea\n2. Milk", "length"), ("1. Later", "stop")],
               ("c", s): [bad, bad, bad], ("d", s): [bad, ("", "stop"), loop]}
    ref = {"c": bad, "d": ("The reference answers d plainly.", "stop")}
    found = find_negatives(_Scripted(greedy, sampled, ref), rows, ["conciseness", "structure"],
                           [conv("c"), conv("a"), conv("d")], samples=3)
    assert found.counts == {
        "conciseness": {"prompts": 4, "degenerate": 1, "pairs": 0, "labelled": 0, "sampled": 0, "reference": 0,
                        "rejected_samples": 0},
        "structure": {"prompts": 4, "degenerate": 4, "pairs": 3, "labelled": 1, "sampled": 1, "reference": 1,
                      "rejected_samples": 0}}

    def pair(p, chosen, chosen_finished):
        return {"prompt": conv(p), "chosen": chosen, "rejected": loop[0], "chosen_finished": chosen_finished,
                "rejected_finished": False, "weights": [0.0, 1.0]}

    assert found.pairs == [pair("a", "1. x\n2. y", True), pair("b", "1. Tea\n2. Milk", False),
                           pair("d", "The reference answers d plainly.", True)]
    assert "structure 4/4 → 3 pairs (chosen: labelled 1, sampled 1, reference 1)" in found.summary()

    # reject_samples: b's degenerate samples other than its greedy output also become rejected (bad's "2 2 2 2"
    # twice counts once); d's chosen is the reference's, and its degenerate samples are rejected too
    sampled = {("b", s): [loop, ("1. Tea\n2. Milk", "length"), bad], ("c", s): [bad, bad, bad],
               ("d", s): [bad, bad, loop]}
    found = find_negatives(_Scripted(greedy, sampled, ref), rows, ["conciseness", "structure"],
                           [conv("c"), conv("a"), conv("d")], samples=3, reject_samples=True)
    assert found.counts["structure"] == {"prompts": 4, "degenerate": 4, "pairs": 5, "labelled": 1, "sampled": 1,
                                         "reference": 1, "rejected_samples": 2}
    extra = [(p["prompt"][0]["content"], p["chosen"], p["rejected"]) for p in found.pairs[1:]]
    assert extra == [("b", "1. Tea\n2. Milk", loop[0]), ("b", "1. Tea\n2. Milk", "2 2 2 2"),
                     ("d", "The reference answers d plainly.", loop[0]),
                     ("d", "The reference answers d plainly.", "2 2 2 2")]
    assert "; 2 rejected samples)" in found.summary()


def test_find_negatives_cleanest_picks_the_most_prose_like_sample():
    from datasets import Dataset

    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "b"}], "chosen": "Short.", "rejected": "x",
                               "weights": [1.0, 0.0]}])
    loop = ("1.1.1.1.1.1.1.1.1.1", "length")
    near = ("1. 1.1.1: Use a wet cloth", "length")  # passes the degenerate guard; prose_score 2/3
    draws = [loop, near, ("1. Wipe the keys\n2. Dry them", "stop"), ("- Use a cloth", "stop")]  # last two tie: 1.0
    greedy = {("b", (0.0, 1.0)): loop}
    first = find_negatives(_Scripted(greedy, {("b", (0.0, 1.0)): list(draws)}), rows, ["c", "s"], samples=4)
    clean = find_negatives(_Scripted(greedy, {("b", (0.0, 1.0)): list(draws)}), rows, ["c", "s"], samples=4,
                           chosen_select="cleanest")
    assert [p["chosen"] for p in first.pairs] == [near[0]]
    assert [(p["chosen"], p["chosen_finished"]) for p in clean.pairs] == [("1. Wipe the keys\n2. Dry them", True)]
    assert clean.counts["s"]["sampled"] == 1
    with pytest.raises(ValueError, match="chosen_select must be one of"):
        find_negatives(_Scripted(greedy), rows, ["c", "s"], chosen_select="best")


def test_read_prompts_accepts_strings_and_conversations_and_names_bad_lines(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n\n{"prompt": [{"role": "user", "content": "yo"}]}\n')
    assert read_prompts(f) == [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    f.write_text('{"prompt": "hi"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl: row 2: field 'prompt'"):
        read_prompts(f)
    f.write_text('{"prompt": "hi"\n')
    with pytest.raises(ValueError, match=r"p.jsonl: row 1: invalid JSON"):
        read_prompts(f)
    f.write_text('{"prompt": [{"role": "assistant", "content": "hi"}]}\n')
    with pytest.raises(ValueError, match=r"p.jsonl: row 1: field 'prompt' must end with a user message"):
        read_prompts(f)


def _policy_logp(model_dir, prompt, response, weights):
    from cmpo.data.templates import PromptTemplate
    from cmpo.models.plural import PluralLM
    from cmpo.train.logprobs import sequence_logprobs

    plural = PluralLM.load(model_dir)
    tmpl = PromptTemplate.resolve(plural.config.template, plural.tokenizer)
    p, r = tmpl.encode(prompt, response, finished=False)
    ids = torch.tensor([p + r])
    mask = torch.zeros_like(ids)
    mask[0, len(p):] = 1
    with torch.no_grad():
        return float(sequence_logprobs(plural, ids, torch.ones_like(ids), mask, weights=torch.tensor([weights]))[0])


def test_a_round_finds_degenerate_outputs_and_pushes_them_down(tmp_path, prepared, tiny_model_dir, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="cmpo.train.runs")
    cfg = RunConfig()
    cfg.model.name, cfg.model.head_rank, cfg.model.lora_rank, cfg.model.adapter = tiny_model_dir, 4, 4, "plural"
    cfg.data.max_length, cfg.data.max_prompt_length = 48, 24
    t = cfg.train
    t.learning_rate, t.logging_steps, t.disable_tqdm, t.max_steps, t.per_device_train_batch_size = 1e-3, 1, True, 1, 2
    t.output_dir = str(tmp_path / "ckpt")
    cfg.negatives.rounds, cfg.negatives.max_new_tokens, cfg.negatives.max_steps = 1, 12, 10
    cfg.negatives.learning_rate = 3e-3
    cfg.loss.epsilon = 0.0
    before = runs.run_cmpo(cfg.__class__(**{**cfg.__dict__, "negatives": type(cfg.negatives)()}), prepared,
                           tmp_path / "before")
    after = runs.run_cmpo(cfg, prepared, tmp_path / "after")
    assert before.negatives == []
    (counts,) = after.negatives
    # every one of the prepared train split's 12 prompts is generated under both one-hot λs
    assert {a: c["prompts"] for a, c in counts.items()} == {"helpfulness": 12, "humor": 12}
    assert sum(c["degenerate"] for c in counts.values()) > 0  # a random tiny model writes non-prose
    assert "negatives round 1: degenerate / generated per attribute" in caplog.text
    round_steps = [h for h in after.log_history if h.get("negatives_round") == 1 and "loss" in h]
    assert len(round_steps) == 10
    # the round's pairs reject the policy's own greedy outputs: under their λ those outputs lose likelihood
    pairs = runs_last_negatives(tmp_path)
    assert pairs and all(is_degenerate(p["rejected"]) for p in pairs)
    p = pairs[0]
    def logp(model, p, response):
        return _policy_logp(tmp_path / model, p["prompt"], p[response], p["weights"])

    for p in pairs:  # measured: each drops 11–16 nats; the chosen ones rise by ~2 on average
        assert logp("after", p, "rejected") < logp("before", p, "rejected") - 5.0
    assert sum(logp("after", p, "chosen") - logp("before", p, "chosen") for p in pairs) > 0


def runs_last_negatives(tmp_path):
    import json

    path = tmp_path / "ckpt" / "negatives-1" / "negatives.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("sample_batch_size", 0), ("max_steps", 0),
                                         ("replay", -0.5), ("rounds", -1), ("chosen_select", "best")])
def test_bad_negatives_settings_fail_before_training(field, value):
    cfg = RunConfig()
    cfg.negatives.rounds = 1
    setattr(cfg.negatives, field, value)
    with pytest.raises(ValueError, match=field):
        runs._check_negatives(cfg)
