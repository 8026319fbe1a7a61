"""CMPO invariants: k = 1 CMPO ≡ DPO (loss and gradients); the plural model at init has zero implicit reward."""

import pytest
import torch

from cmpo.train.config import RunConfig
from cmpo.train.logprobs import collate_sequences
from cmpo.train.losses import preference_loss
from cmpo.train.trainers import PolicyModel


def _pair_batch():
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    chosen, rejected = [[20, 21, 2], [22, 2]], [[30, 2], [31, 32, 33, 2]]
    return collate_sequences(prompts + prompts, chosen + rejected, pad_id=2)


def _dpo_loss(policy, b, weights=None):
    with torch.no_grad():
        ref = policy(**b, reference=True)
    logp = policy(**b, weights=weights)
    loss, m = preference_loss(logp[:2], logp[2:], ref[:2], ref[2:], beta=0.5, epsilon=0.1)
    return loss.mean(), m


def _perturb(named_params, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(named_params, key=lambda x: x[0]):
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("head_mode", ["full", "lowrank"])
def test_cmpo_with_one_attribute_equals_dpo(tiny_model_dir, head_mode):
    from cmpo.models.loading import load_model
    from cmpo.train.runs import _lora, build_plural

    cfg = RunConfig()
    cfg.model.name, cfg.model.head_mode, cfg.model.lora_rank = tiny_model_dir, head_mode, 4
    plural = build_plural(cfg, ["only"])
    dpo_model = _lora(load_model(tiny_model_dir)[0], cfg)
    def lora(m):
        return [(n.split("base_model.model.")[-1], p) for n, p in m.named_parameters() if "lora_" in n]
    pl, dl = dict(lora(plural)), dict(lora(dpo_model))
    assert pl.keys() == dl.keys() and len(pl) > 0
    for n in pl:  # same LoRA init from the same seed
        assert torch.equal(pl[n], dl[n]), n
    _perturb(lora(plural))
    _perturb(lora(dpo_model))  # same names, same generator -> same perturbed weights
    b = _pair_batch()
    loss_c, m_c = _dpo_loss(PolicyModel(plural, chunk_size=4), b, weights=torch.ones(4, 1))
    loss_d, m_d = _dpo_loss(PolicyModel(dpo_model, chunk_size=4), b)
    assert loss_c.item() != pytest.approx(0.6931, abs=1e-3)  # the LoRA perturbation moved the policy
    torch.testing.assert_close(loss_c, loss_d, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m_c["rewards/margins"], m_d["rewards/margins"], atol=1e-6, rtol=1e-6)
    loss_c.backward()
    loss_d.backward()
    for n in pl:
        torch.testing.assert_close(pl[n].grad, dl[n].grad, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("head_mode,adapter", [("full", "shared"), ("lowrank", "plural"), ("lowrank", "none")])
def test_plural_model_at_init_has_zero_implicit_reward(tiny_model_dir, head_mode, adapter):
    from cmpo.train.runs import build_plural

    cfg = RunConfig()
    cfg.model.name, cfg.model.head_mode, cfg.model.adapter = tiny_model_dir, head_mode, adapter
    plural = build_plural(cfg, ["a", "b"])
    policy = PolicyModel(plural, chunk_size=5)
    b = _pair_batch()
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
    _, m = _dpo_loss(policy, b, weights=w)
    assert torch.equal(m["rewards/chosen"], torch.zeros(2))
    assert torch.equal(m["rewards/rejected"], torch.zeros(2))
