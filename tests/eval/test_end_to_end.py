"""End to end on CPU: a tiny plural model with perturbed heads, hand-made prepared data, `cmpo eval`."""

import json

import numpy as np
import pytest
import torch

ATTRS = ["conciseness", "enthusiasm", "structure"]
PROMPTS = ["Explain bread.", "Say hi!", "List two steps.", "Tell me about the fox."]


@pytest.fixture(scope="module")
def plural_dir(tmp_path_factory):
    from cmpo.models.plural import PluralConfig, PluralLM

    cfg = PluralConfig(attributes=ATTRS, head_mode="lowrank", head_rank=4, adapter="none",
                       base_model="tiny-random", template="chat")
    model = PluralLM.from_base("tiny-random", cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # heads perturbed so each condition gives different outputs
        model.head.B.copy_(torch.randn(model.head.B.shape, generator=gen) * 2.0)
    return str(model.save(tmp_path_factory.mktemp("m") / "cmpo"))


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    from datasets import Dataset, DatasetDict

    d = tmp_path_factory.mktemp("data") / "prepared"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"attributes": ATTRS, "template": "chat"}))
    def conv(t):
        return [{"role": "user", "content": t}]
    sft = [{"prompt_id": f"p{i}", "prompt": conv(p), "response": r,
            "ratings": json.dumps({"conciseness": c, "enthusiasm": e, "structure": s})}
           for i, p in enumerate(PROMPTS)
           for r, c, e, s in [("Fine.", 4, 0, 0), ("Great!! I love it!", 3, 3, 0), ("- one\n- two\n- three", 3, 0, 3)]]
    pairs = [{"prompt_id": f"p{i}", "prompt": conv(p), "chosen": ch, "rejected": rj, "attribute": a, "margin": 2.0}
             for i, p in enumerate(PROMPTS)
             for a, ch, rj in [("conciseness", "Fine.", "Well, that is a long story about bread and more."),
                               ("enthusiasm", "Wow! Great!", "Okay."), ("structure", "- a\n- b", "a and b")]]
    for name, rows in (("sft", sft), ("pairs", pairs)):
        ds = Dataset.from_list(rows)
        DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(d / name))
    return str(d)


def test_conditioned_logprobs_match_a_manual_forward(plural_dir, tiny_model_dir):
    from cmpo.eval.metrics import Condition, conditioned_logprobs
    from cmpo.serve.generate import SteerableModel

    sm = SteerableModel.load(plural_dir)
    prompts, responses = [[{"role": "user", "content": "Say hi!"}]] * 2, ["Hi!", "- a\n- b"]
    lam = (0.0, 1.0, 0.0)
    got = conditioned_logprobs(sm, prompts, responses, Condition(weights=lam), batch_size=1)
    for i in range(2):
        p, r = sm.template.encode(prompts[i], responses[i])
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = sm.model(ids, torch.ones_like(ids), weights=list(lam)).logits[0].float()
        lp = torch.log_softmax(logits, -1)[len(p) - 1:-1].gather(-1, torch.tensor(r)[:, None]).sum()
        assert got[i] == pytest.approx(lp.item(), abs=1e-4)
    # π_ref of the plural model is exactly the base model
    base = SteerableModel.load(tiny_model_dir)
    ref = conditioned_logprobs(sm.reference(), prompts, responses)
    assert np.allclose(ref, conditioned_logprobs(base, prompts, responses), atol=1e-4)
    assert not np.allclose(ref, got, atol=1e-2)  # the perturbed head differs from the reference
    norm = conditioned_logprobs(base, prompts, responses, normalize=True)
    n_tok = [len(sm.template.encode(p, r)[1]) for p, r in zip(prompts, responses)]
    assert np.allclose(norm * n_tok, ref, atol=1e-4)


def test_repeated_rows_are_scored_once_and_accuracy_matches_per_attribute_scoring(plural_dir, monkeypatch):
    from cmpo.eval import metrics as M
    from cmpo.serve.generate import SteerableModel
    from cmpo.train import logprobs

    sm = SteerableModel.load(plural_dir)
    conv = [{"role": "user", "content": "Say hi!"}]
    a, b = M.Condition(weights=(1.0, 0.0, 0.0)), M.Condition(weights=(0.0, 1.0, 0.0))
    rows = [("Hi!", a, True), ("Hello.", a, True), ("Hi!", a, True), ("Hi!", b, True), ("Hi!", a, False)]
    scored = []
    real = logprobs.sequence_logprobs
    monkeypatch.setattr(logprobs, "sequence_logprobs", lambda *x, **k: scored.append(len(x[1])) or real(*x, **k))
    got = M.conditioned_logprobs(sm, [conv] * 5, [r for r, _, _ in rows], [c for _, c, _ in rows], batch_size=2,
                                 finished=[f for _, _, f in rows])
    assert sum(scored) == 4  # row 2 repeats row 0; λ and the end-of-turn token make the others distinct
    one = [M.conditioned_logprobs(sm, [conv], [r], c, finished=[f])[0] for r, c, f in rows]
    assert np.allclose(got, one, atol=1e-5) and got[0] == got[2] and got[0] != got[3] and got[0] != got[4]

    # accuracy over several attributes (one scoring call per model) = scoring each attribute on its own
    pairs = [{"prompt": [{"role": "user", "content": p}], "chosen": c, "rejected": r, "attribute": attr}
             for p in PROMPTS for attr, c, r in [("conciseness", "Fine.", "A long story about it."),
                                                 ("enthusiasm", "Wow! Great!", "Fine."),
                                                 ("structure", "- a\n- b", "Fine.")]]
    em = M.EvalModel("cmpo", {None: sm})
    acc = M.evaluate_preference_accuracy(em, pairs, ATTRS, max_pairs=None)
    for attr in ATTRS:
        rows_a = [p for p in pairs if p["attribute"] == attr]
        _, cond = em.for_attribute(attr)
        pol = M.conditioned_logprobs(sm, [p["prompt"] for p in rows_a] * 2,
                                     [p["chosen"] for p in rows_a] + [p["rejected"] for p in rows_a], cond)
        ref = M.conditioned_logprobs(sm.reference(), [p["prompt"] for p in rows_a] * 2,
                                     [p["chosen"] for p in rows_a] + [p["rejected"] for p in rows_a])
        n = len(rows_a)
        assert acc[attr]["policy"] == M.preference_accuracy(pol[:n], pol[n:])
        assert acc[attr]["implicit_reward"] == M.implicit_reward_accuracy(pol[:n], pol[n:], ref[:n], ref[n:])


def test_mixed_condition_batches_match_per_condition_batches_and_prefetch_fills_the_cache(plural_dir):
    from cmpo.eval.generation import GenerationCache, generate_conditioned
    from cmpo.eval.metrics import Condition
    from cmpo.serve.generate import SteerableModel

    sm = SteerableModel.load(plural_dir)
    conds = [Condition(weights=w) for w in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.5, 0.5, 0.0))]
    prompts = [p for _ in conds for p in PROMPTS]
    per_row = [c for c in conds for _ in PROMPTS]
    grouped = generate_conditioned(sm, prompts, per_row, max_new_tokens=10, batch_size=4)
    mixed = generate_conditioned(sm, prompts, per_row, max_new_tokens=10, batch_size=5, mix_conditions=True)
    assert mixed == grouped and len(set(grouped[0])) > 4  # the conditions really differ

    calls = []
    orig = sm.generate_rows
    sm.generate_rows = lambda rows, opts: calls.append(len(rows)) or orig(rows, opts)
    cache = GenerationCache(max_new_tokens=10, batch_size=6)
    cache.prefetch(sm, PROMPTS, conds)
    assert calls == [6, 6]  # 12 rows, conditions sharing batches
    for c, start in zip(conds, range(0, 12, 4)):
        assert cache.get(sm, PROMPTS, c)[0] == grouped[0][start:start + 4]
    assert calls == [6, 6]  # nothing generated again
    assert [r["condition"] for r in cache.rows()] == [c.describe() for c in conds for _ in PROMPTS]


def test_pareto_sweep_on_a_prefix_generates_its_mixed_conditions_only_there(plural_dir):
    from cmpo.eval import steerability as S
    from cmpo.eval.generation import GenerationCache
    from cmpo.eval.metrics import EvalModel
    from cmpo.eval.raters import RuleScorer

    em, scorer, pair = EvalModel.load("cmpo", plural_dir), RuleScorer(), ["conciseness", "enthusiasm"]
    sm = em.models[None]
    calls = []
    orig = sm.generate_rows
    sm.generate_rows = lambda rows, opts: calls.append(len(rows)) or orig(rows, opts)
    gens = GenerationCache(max_new_tokens=10, batch_size=32)
    S.prefetch_conditions(em, PROMPTS, scorer, gens, ATTRS, pair, grid=3, pareto_prompts=2)
    # 3 one-hot conditions × 4 prompts, then the sweep's one mixed λ (0.5, 0.5) × 2 (its endpoints are one-hot)
    assert calls == [12, 2]
    sweep = S.evaluate_pareto(em, PROMPTS[:2], scorer, gens, pair, grid=3)
    assert calls == [12, 2]  # the sweep read the cache (only the reference, another model, generated)
    sm.generate_rows = orig
    alone = S.evaluate_pareto(em, PROMPTS[:2], scorer, GenerationCache(max_new_tokens=10, batch_size=4), pair, 3)
    assert sweep == alone and sweep["n_prompts"] == 2


@pytest.mark.integration
def test_cmpo_eval_end_to_end(plural_dir, prepared_dir, tmp_path):
    from cmpo.cli import main

    logs = tmp_path / "train-logs"
    logs.mkdir()
    (logs / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": s, "loss": 0.7 - 0.1 * s, "rewards/accuracies": 0.5 + 0.1 * s} for s in range(1, 4)]}))
    out = tmp_path / "report"
    rc = main(["eval", "--models", f"cmpo={plural_dir}", "--data", prepared_dir, "--judge", "rules",
               "--metrics", "accuracy,correlation,winrate,steerability,pareto", "--pareto", "conciseness,enthusiasm",
               "--pareto-grid", "3", "--pareto-prompts", "2", "--num-prompts", "3", "--max-new-tokens", "12",
               "--batch-size", "4",
               "--logs", f"cmpo={logs}", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for attr in ATTRS:
        acc = metrics["accuracy"]["cmpo"][attr]
        assert acc["policy"]["n"] == 4 and 0 <= acc["policy"]["accuracy"] <= 1
        assert acc["implicit_reward"]["n"] == 4
        assert metrics["correlation"]["cmpo"][attr]["n"] == 12
        wr = metrics["winrate"]["cmpo"][attr]
        assert wr["n"] + wr["invalid"] == 3 and wr["wins"] + wr["ties"] + wr["losses"] == wr["n"]
    st = metrics["steerability"]["cmpo"]
    assert st["attributes"] == ATTRS and np.array(st["effect"]).shape == (3, 3) and st["n_prompts"] == 3
    assert 0 <= st["guards"]["reference"]["finished"] <= 1 and st["guards"]["conciseness"]["reference_perplexity"] > 1
    pareto = metrics["pareto"]["cmpo"]
    assert [p["t"] for p in pareto["points"]] == [1.0, 0.5, 0.0] and pareto["hypervolume"] >= 0
    assert pareto["n_prompts"] == 2 and metrics["settings"]["pareto_prompts"] == 2  # the sweep: a prefix
    assert metrics["settings"]["num_prompts"] == 3 and metrics["settings"]["max_new_tokens"] == 12
    html_text = (out / "report.html").read_text()
    for name, rel in metrics["plots"].items():
        png = (out / rel).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and f'data-plot="{name}"' in html_text
    assert set(metrics["plots"]) >= {"winrate", "accuracy", "reward_accuracy", "correlation", "heatmap_cmpo",
                                     "pareto", "training"}


def test_cli_errors_are_clear(tmp_path, capsys):
    from cmpo.cli import main

    assert main(["eval", "--models", "oops", "--out", str(tmp_path)]) == 2
    assert "--models: 'oops' is not NAME=DIR" in capsys.readouterr().err
    assert main(["eval", "--models", "a=x", "--metrics", "speed", "--out", str(tmp_path)]) == 2
    assert "--metrics: unknown metric(s) ['speed']" in capsys.readouterr().err
    assert main(["eval", "--models", "a=x", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "meta.json not found" in capsys.readouterr().err
    assert main(["eval", "--models", "a=x", "--judge", "gpt", "--out", str(tmp_path)]) == 2
    assert "unknown judge 'gpt'" in capsys.readouterr().err
