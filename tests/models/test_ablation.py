"""Ablating one attribute's head / adapter deltas: exact equivalences and restoration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmpo.models.ablation import ablated
from tests.models.test_plural import ATTRS, make_plural, perturb

E = {a: torch.eye(len(ATTRS))[i] for i, a in enumerate(ATTRS)}


@pytest.fixture()
def ids_mask(tiny_model_dir):
    from cmpo.models.loading import load_tokenizer

    enc = load_tokenizer(tiny_model_dir)(["hello there, how are you?", "list two items: bread and milk"],
                                         return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _logits(plural, ids, mask, lam):
    with torch.no_grad():
        return plural(ids, mask, weights=lam).logits


@pytest.mark.parametrize("head_mode", ["lowrank", "full"])
def test_each_part_alone_and_both_parts(tiny_model_dir, ids_mask, head_mode):
    ids, mask = ids_mask
    plural = make_plural(tiny_model_dir, head_mode, "plural")
    perturb(plural)
    plural.eval()
    lam = E["humor"]
    full = _logits(plural, ids, mask, lam)
    with torch.no_grad():
        with plural.reference():
            ref = plural.model(input_ids=ids, attention_mask=mask).logits
        h_adapted = plural.hidden_states(ids, mask, weights=lam)
        h_ref = plural.hidden_states(ids, mask, reference=True)
        w_humor = plural.head.head_weight(1).clone()
    with ablated(plural, "humor", parts=("head",)):  # adapters steer, the head is W0
        torch.testing.assert_close(_logits(plural, ids, mask, lam), F.linear(h_adapted, plural.head.base_weight))
    with ablated(plural, "humor", parts=("adapters",)):  # the head steers a reference trunk
        torch.testing.assert_close(_logits(plural, ids, mask, lam), F.linear(h_ref, w_humor))
    with ablated(plural, "humor"):
        torch.testing.assert_close(_logits(plural, ids, mask, lam), ref)
        # another attribute's condition does not use humor's parts at all
        other = _logits(plural, ids, mask, E["safety"])
    torch.testing.assert_close(other, _logits(plural, ids, mask, E["safety"]), rtol=0, atol=0)
    torch.testing.assert_close(_logits(plural, ids, mask, lam), full, rtol=0, atol=0)  # restored exactly
    assert not torch.equal(full, ref)  # the perturbed model did differ from the reference


def test_fused_head_cache_sees_the_ablation(tiny_model_dir):
    plural = make_plural(tiny_model_dir, "lowrank", "none")
    perturb(plural)
    lam = E["safety"]
    before = plural.head.fused_weight(lam).clone()  # fills the cache generation uses
    with ablated(plural, "safety", parts=("head",)):
        torch.testing.assert_close(plural.head.fused_weight(lam), plural.head.base_weight)
    torch.testing.assert_close(plural.head.fused_weight(lam), before, rtol=0, atol=0)


def test_restores_on_error(tiny_model_dir):
    plural = make_plural(tiny_model_dir, "lowrank", "plural")
    perturb(plural)
    state = {k: v.clone() for k, v in plural.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with ablated(plural, "helpfulness"):
            raise RuntimeError("boom")
    assert all(torch.equal(v, state[k]) for k, v in plural.state_dict().items())


def test_bad_requests_name_the_problem(tiny_model_dir):
    shared = make_plural(tiny_model_dir, "lowrank", "shared")
    with pytest.raises(ValueError, match="adapter='plural'"):
        with ablated(shared, "humor", parts=("adapters",)):
            pass
    with pytest.raises(ValueError, match="unknown attribute 'verbosity'"):
        with ablated(shared, "verbosity"):
            pass
    with pytest.raises(ValueError, match="non-empty subset"):
        with ablated(shared, "humor", parts=("trunk",)):
            pass
