"""Logits processors: the generated-token repetition penalty and the nucleus filter without a full sort."""

import pytest
import torch
from transformers import TopPLogitsWarper

from cmpo.serve.processors import GeneratedRepetitionPenalty, NucleusFilter, make_processors


def test_repetition_penalty_only_generated_tokens_and_never_eos():
    # prompt = [5, 6] (2 columns), generated so far = [7, 2, 7]; EOS = 2.
    proc = make_processors(prompt_len=2, repetition_penalty=2.0, exempt=[2])[0]
    assert isinstance(proc, GeneratedRepetitionPenalty)
    ids = torch.tensor([[5, 6, 7, 2, 7]])
    scores = torch.tensor([[1.0, 1.0, 4.0, 1.0, 1.0, 3.0, -3.0, 6.0, -6.0]])
    out = proc(ids, scores.clone())
    expected = scores.clone()
    expected[0, 7] = 3.0  # generated, positive: divided by the penalty (once, despite appearing twice)
    torch.testing.assert_close(out, expected)  # prompt tokens 5, 6 and EOS 2 untouched
    scores[0, 7] = -6.0
    expected[0, 7] = -12.0  # negative logits are multiplied
    torch.testing.assert_close(proc(ids, scores.clone()), expected)
    assert len(make_processors(2, 1.0, [2])) == 0


def test_nucleus_filter_on_a_hand_computed_row():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps the first two (mass above the third is 0.8, not < 0.8)
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    out = NucleusFilter(0.8, k=4)(None, scores)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    assert NucleusFilter(0.81, k=4)(None, scores).isfinite().sum() == 3
    assert NucleusFilter(0.1, k=4)(None, scores).isfinite().sum() == 1  # the top token always stays


@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])
def test_nucleus_filter_removes_what_transformers_top_p_removes(scale):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 3000, generator=gen) * scale
    scores[:8] *= 0.05  # near-flat rows: the nucleus reaches past k, so they take the full-sort path
    ids = torch.zeros(64, 1, dtype=torch.long)
    for top_p in (0.5, 0.9, 0.95):
        want = TopPLogitsWarper(top_p=top_p)(ids, scores.clone())
        got = NucleusFilter(top_p, k=64)(ids, scores.clone())
        assert torch.equal(got, want)


@pytest.mark.parametrize("top_p,k", [(0.3, 512), (0.95, 512), (0.95, 16)])
def test_seeded_sampling_draws_the_same_tokens_as_transformers_warpers(tiny_model_dir, monkeypatch, top_p, k):
    from cmpo.serve import processors
    from cmpo.serve.generate import GenerationOptions, SteerableModel

    sorts = []

    class CountingTopP(TopPLogitsWarper):
        def __call__(self, input_ids, scores):
            sorts.append(len(scores))
            return super().__call__(input_ids, scores)

    monkeypatch.setattr(processors, "TopPLogitsWarper", CountingTopP)
    monkeypatch.setattr(processors, "NUCLEUS_K", k)
    sm = SteerableModel.load(tiny_model_dir)
    opts = GenerationOptions(max_new_tokens=24, do_sample=True, temperature=0.8, top_p=top_p, seed=3,
                             repetition_penalty=1.1)
    prompts = ["hello there", "list two items", "What a day!", "Explain bread."]
    ours = sm.generate(prompts, options=opts, batch_size=4)
    # k = 512 covers the tiny model's vocabulary (no full sort); with k = 16 the 0.95-nucleus of its near-flat
    # distributions reaches past the top 16 at every step, so the full-sort fallback runs
    assert (len(sorts) == 0) if k == 512 else (len(sorts) == 24 and sum(sorts) == 4 * 24)
    monkeypatch.setattr(processors, "sampling_in_processors", lambda *a: False)  # transformers' own warpers
    theirs = sm.generate(prompts, options=opts, batch_size=4)
    assert ours == theirs and len(set(ours)) == 4
