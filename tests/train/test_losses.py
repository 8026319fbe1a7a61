"""cDPO / DPO / IPO on a hand-made batch: values and gradients against hand-computed formulas."""

import math

import pytest
import torch

from cmpo.train.losses import preference_loss


def _sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cdpo_value_and_gradient_match_hand_computation(eps):
    beta = 0.5
    # two pairs: (policy chosen, policy rejected, ref chosen, ref rejected)
    rows = [(-1.0, -2.0, -1.5, -1.5), (-3.0, -1.0, -2.0, -2.5)]
    pc, pr, rc, rr = (torch.tensor(c, dtype=torch.float64, requires_grad=i < 2) for i, c in enumerate(zip(*rows)))
    loss, m = preference_loss(pc, pr, rc, rr, beta=beta, epsilon=eps)
    loss.sum().backward()
    for b, (a, r, ra, rb) in enumerate(rows):
        delta = beta * ((a - ra) - (r - rb))
        want = -(1 - eps) * math.log(_sig(delta)) - eps * math.log(_sig(-delta))
        # dL/dΔ = −(1−ε)σ(−Δ) + εσ(Δ); dΔ/dπ_c = β, dΔ/dπ_r = −β
        dldd = -(1 - eps) * _sig(-delta) + eps * _sig(delta)
        assert loss[b].item() == pytest.approx(want, abs=1e-12)
        assert pc.grad[b].item() == pytest.approx(beta * dldd, abs=1e-12)
        assert pr.grad[b].item() == pytest.approx(-beta * dldd, abs=1e-12)
        assert m["rewards/chosen"][b].item() == pytest.approx(beta * (a - ra))
        assert m["rewards/rejected"][b].item() == pytest.approx(beta * (r - rb))
        assert m["rewards/margins"][b].item() == pytest.approx(delta)
        assert m["rewards/accuracies"][b].item() == float(delta > 0)
    # the numbers themselves, for the first pair: Δ = 0.5·(0.5 − (−0.5)) = 0.5
    if eps == 0.0:
        assert loss[0].item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-12)


def test_cdpo_optimum_is_capped_and_ipo_is_quadratic():
    eps, beta = 0.1, 0.5
    # cDPO's minimiser is Δ* = log((1−ε)/ε): the gradient vanishes there
    d_star = math.log((1 - eps) / eps)
    pc = torch.tensor([d_star / beta], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    loss, _ = preference_loss(pc, zero, zero, zero, beta=beta, epsilon=eps)
    loss.sum().backward()
    assert abs(pc.grad.item()) < 1e-12
    # IPO: h = (π_c − ref_c) − (π_r − ref_r) = 1, β = 0.25 → (1 − 2)² = 1
    h = torch.tensor([1.0], dtype=torch.float64)
    loss, _ = preference_loss(h, zero, zero, zero, beta=0.25, epsilon=0.0, loss_type="ipo")
    assert loss.item() == pytest.approx(1.0)


def test_chosen_nll_term_adds_alpha_times_per_token_nll():
    # pair: π_c = −6 over 3 tokens, π_r = −2, refs −5 / −3; β = 0.5, ε = 0: Δ = 0.5·((−1) − 1) = −1
    pc = torch.tensor([-6.0], dtype=torch.float64, requires_grad=True)
    pr, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in (-2.0, -5.0, -3.0))
    loss, m = preference_loss(pc, pr, rc, rr, beta=0.5, epsilon=0.0, chosen_nll_weight=0.2,
                              chosen_tokens=torch.tensor([3]))
    want = math.log1p(math.exp(1.0)) + 0.2 * 6.0 / 3  # −log σ(−1) + α · 2
    assert loss.item() == pytest.approx(want, abs=1e-12)
    assert m["nll/chosen_per_token"].item() == pytest.approx(2.0)
    loss.backward()  # dL/dπ_c = β·(−σ(−Δ)) − α/|y_c| = 0.5·(−σ(1)) − 0.2/3
    assert pc.grad.item() == pytest.approx(-0.5 * _sig(1.0) - 0.2 / 3, abs=1e-12)
    plain, pm = preference_loss(pc.detach(), pr, rc, rr, beta=0.5, epsilon=0.0)
    assert plain.item() == pytest.approx(math.log1p(math.exp(1.0))) and "nll/chosen_per_token" not in pm
    with pytest.raises(ValueError, match="chosen_tokens"):
        preference_loss(pc, pr, rc, rr, chosen_nll_weight=0.2)


def test_bad_settings_raise():
    z = torch.zeros(1)
    with pytest.raises(ValueError, match="epsilon"):
        preference_loss(z, z, z, z, epsilon=0.5)
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(z, z, z, z, loss_type="hinge2")
