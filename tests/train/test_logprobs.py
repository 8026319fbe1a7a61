"""Chunked sequence log-probs == naive full-logits computation (values and gradients), masks from lengths."""

import pytest
import torch

from cmpo.train.logprobs import collate_sequences, mean_logprobs, sequence_logprobs


def _naive(logits, input_ids, response_mask):
    logp = torch.log_softmax(logits.float(), -1)[:, :-1]
    tok = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (tok * response_mask[:, 1:]).sum(1)


def _batch():
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    responses = [[20, 21, 2], [22, 2], [23, 24, 25, 26, 2]]  # 2 = eos = pad
    return collate_sequences(prompts, responses, pad_id=2)


def test_collate_masks_from_lengths_keep_final_eos():
    b = _batch()
    assert b["input_ids"].shape == (3, 9)
    assert b["response_mask"][1].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0]  # the eos at t=3 is scored
    assert b["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert b["input_ids"][1, 4:].eq(2).all()  # padding with eos is not in either mask
    with pytest.raises(ValueError, match="empty prompt"):
        collate_sequences([[]], [[1]])


def test_plain_model_chunked_equals_naive(tiny_model):
    model, _ = tiny_model
    model.train()
    b = _batch()
    got = sequence_logprobs(model, **b, chunk_size=3)  # 10 response tokens -> 4 chunks
    got.sum().backward()
    g_got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    want = _naive(logits, b["input_ids"], b["response_mask"])
    want.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(g_got[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    per_tok = mean_logprobs(model, **b)
    torch.testing.assert_close(per_tok, want / torch.tensor([3.0, 2.0, 5.0]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_mode,adapter", [("lowrank", "plural"), ("full", "shared")])
def test_plural_chunked_equals_naive_per_example_weights(tiny_model_dir, head_mode, adapter):
    from cmpo.models.plural import PluralConfig, PluralLM

    plural = PluralLM.from_base(tiny_model_dir, PluralConfig(["a", "b"], head_mode=head_mode, adapter=adapter,
                                                            head_rank=4, adapter_rank=4))
    with torch.no_grad():  # move away from the init so heads/adapters matter
        for _n, p in plural.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    b = _batch()
    w = torch.tensor([[1.0, 0.0], [0.3, 0.7], [-0.5, 1.5]])
    got = sequence_logprobs(plural, **b, weights=w, chunk_size=4)
    got.sum().backward()
    g_got = {n: p.grad.clone() for n, p in plural.named_parameters() if p.requires_grad}
    plural.zero_grad()
    logits = plural(input_ids=b["input_ids"], attention_mask=b["attention_mask"], weights=w).logits
    want = _naive(logits, b["input_ids"], b["response_mask"])
    want.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for n, p in plural.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(g_got[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    # reference=True is exactly the base model
    with torch.no_grad():
        ref = sequence_logprobs(plural, **b, reference=True)
        with plural.reference():
            base_logits = plural.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(ref, _naive(base_logits, b["input_ids"], b["response_mask"]), atol=1e-5, rtol=1e-5)


def test_shape_errors(tiny_model):
    model, _ = tiny_model
    b = _batch()
    with pytest.raises(ValueError, match="same"):
        sequence_logprobs(model, b["input_ids"], b["attention_mask"][:, :-1], b["response_mask"])
    with pytest.raises(ValueError, match="PluralLM"):
        sequence_logprobs(model, **b, weights=torch.ones(3, 2))


def test_previous_token_candidates_by_hand():
    from cmpo.train.logprobs import previous_token_candidates

    tok = torch.tensor([[5, 7, 5, 9, 0]])
    valid = torch.tensor([[True, True, True, True, False]])
    cand, mask = previous_token_candidates(tok, valid)

    def picked(i):
        return sorted(cand[0, i][mask[0, i]].tolist())

    # i=0: nothing earlier; i=1: {5}; i=2 (a repeated 5): {7} (5 is the target); i=3: {5, 7} (5 once); pad: none
    assert [picked(i) for i in range(5)] == [[], [5], [7], [5, 7], []]


def test_unlikelihood_equals_naive_and_has_gradients(tiny_model):
    from cmpo.train.logprobs import token_logprobs, token_logprobs_unlikelihood

    model, _ = tiny_model
    model.train()
    prompts = [[5, 6, 7], [8, 9]]
    responses = [[20, 21, 20, 22, 21, 2], [23, 23, 2]]
    b = collate_sequences(prompts, responses, pad_id=2)
    logp, ul, rows = token_logprobs_unlikelihood(model, **b, chunk_size=3)  # 9 tokens -> 3 chunks
    want_logp, want_rows = token_logprobs(model, **b)
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=1e-5)
    assert rows.tolist() == want_rows.tolist()
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float(), -1)
    want = []
    for r, (p, resp) in enumerate(zip(prompts, responses)):
        for i, t in enumerate(resp):
            prev = set(resp[:i]) - {t}
            q = probs[r, len(p) + i - 1]  # the position that predicts response token i
            want.append(sum(-torch.log1p(-q[c]) for c in prev) if prev else torch.tensor(0.0))
    torch.testing.assert_close(ul, torch.stack(want).float(), atol=1e-6, rtol=1e-5)
    assert ul[0] == 0 and ul[1] > 0  # row 0: first token has no candidates, the second has {20}
    (ul.sum() - logp.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
