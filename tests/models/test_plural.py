"""The plural model: init equivalence, fused ≡ naive mixing, per-example λ, save/load, export."""

from __future__ import annotations

import pytest
import torch

from cmpo.models.loading import load_model
from cmpo.models.plural import PluralConfig, PluralLM, is_plural_dir
from cmpo.models.steering import SteeringError

ATTRS = ["helpfulness", "humor", "safety"]
MODES = [(h, a) for h in ("lowrank", "full") for a in ("shared", "plural", "none")]


def make_plural(model_dir, head_mode="lowrank", adapter="shared", attrs=ATTRS, dtype=torch.float32, **kw):
    model, tok = load_model(model_dir, dtype=dtype)
    cfg = PluralConfig(attributes=list(attrs), head_mode=head_mode, adapter=adapter, base_model=model_dir,
                       head_rank=4, adapter_rank=4, **kw)
    return PluralLM(model, cfg, tokenizer=tok)


def perturb(plural: PluralLM, scale: float = 0.5, seed: int = 1) -> None:
    """Move every trainable parameter away from its (identity) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in plural.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))


@pytest.fixture()
def batch(tiny_model_dir):
    from cmpo.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    enc = tok(["hello there, how are you?", "list two items: bread and milk"], return_tensors="pt",
              padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("head_mode,adapter", MODES)
def test_init_equals_base_when_weights_sum_to_one(tiny_model_dir, batch, head_mode, adapter):
    ids, mask = batch
    base, _ = load_model(tiny_model_dir)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits
    plural = make_plural(tiny_model_dir, head_mode, adapter)
    for lam in ([1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.7, -0.2, 0.5]):
        with torch.no_grad():
            got = plural(ids, mask, weights=torch.tensor(lam)).logits
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("head_mode", ["lowrank", "full"])
def test_fused_head_equals_naive_mix_float64(tiny_model_dir, head_mode):
    plural = make_plural(tiny_model_dir, head_mode, "none")
    perturb(plural)
    plural.to(torch.float64)
    head = plural.head
    hidden = torch.randn(3, 5, head.base_weight.shape[1], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        lam = torch.randn(3, generator=gen, dtype=torch.float64)  # includes negative weights
        naive = sum(lam[j] * (hidden @ head.head_weight(j).T) for j in range(3))
        fused = hidden @ head.fused_weight(lam).T
        mixed = head(hidden, lam)
        torch.testing.assert_close(fused, naive, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(mixed, naive, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("head_mode,adapter", [("lowrank", "plural"), ("full", "shared")])
def test_one_hot_selects_single_head(tiny_model_dir, batch, head_mode, adapter):
    ids, mask = batch
    plural = make_plural(tiny_model_dir, head_mode, adapter)
    perturb(plural)
    for j in range(3):
        lam = torch.zeros(3)
        lam[j] = 1.0
        with torch.no_grad():
            hidden = plural.hidden_states(ids, mask, weights=lam)
            got = plural(ids, mask, weights=lam).logits
            expected = hidden @ plural.head.head_weight(j).T
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head_mode,adapter", [("lowrank", "plural"), ("full", "shared"), ("lowrank", "none")])
def test_per_example_weights_equal_looping(tiny_model_dir, head_mode, adapter):
    from cmpo.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    plural = make_plural(tiny_model_dir, head_mode, adapter)
    perturb(plural, scale=0.05)
    texts = ["one two three", "be funny!", "safety first, always"]
    lams = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [-0.5, 0.0, 1.5]])
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        batched = plural(enc["input_ids"], enc["attention_mask"], weights=lams).logits
        for i, text in enumerate(texts):
            one = tok([text], return_tensors="pt")
            single = plural(one["input_ids"], one["attention_mask"], weights=lams[i]).logits[0]
            n = single.shape[0]
            torch.testing.assert_close(batched[i, :n], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_mode,adapter", MODES)
def test_reference_is_exactly_base(tiny_model_dir, batch, head_mode, adapter):
    ids, mask = batch
    base, _ = load_model(tiny_model_dir)
    plural = make_plural(tiny_model_dir, head_mode, adapter)
    perturb(plural)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits
        with plural.reference() as ref:
            got = ref(input_ids=ids, attention_mask=mask).logits
        steered = plural(ids, mask, weights=torch.tensor([1.0, 0.0, 0.0])).logits
    assert torch.equal(got, expected)
    assert (steered - expected).abs().max() > 1e-3  # the perturbation is visible outside reference mode


@pytest.mark.parametrize("head_mode,adapter", MODES)
def test_save_load_round_trip_bit_identical(tiny_model_dir, tmp_path, batch, head_mode, adapter):
    ids, mask = batch
    plural = make_plural(tiny_model_dir, head_mode, adapter)
    perturb(plural)
    out = plural.save(tmp_path / "plural")
    assert is_plural_dir(out)
    loaded = PluralLM.load(out)
    a, b = plural.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lam = torch.tensor([0.3, 0.3, 0.4])
    with torch.no_grad():
        assert torch.equal(plural(ids, mask, weights=lam).logits, loaded(ids, mask, weights=lam).logits)


def test_save_only_stores_weights_that_differ_from_base(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    plural = make_plural(tiny_model_dir, "lowrank", "shared")
    out = plural.save(tmp_path / "p")
    with safe_open(out / "plural.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(("lora_" in k) or ("lm_head" in k) for k in keys)
    assert not any(k.endswith("base_weight") for k in keys)


def test_self_contained_save_loads_without_base(tiny_model_dir, tmp_path, batch):
    ids, mask = batch
    plural = make_plural(tiny_model_dir, "lowrank", "plural")
    perturb(plural)
    out = plural.save(tmp_path / "p", self_contained=True)
    loaded = PluralLM.load(out)
    lam = torch.tensor([0.0, 1.0, 0.0])
    with torch.no_grad():
        assert torch.equal(plural(ids, mask, weights=lam).logits, loaded(ids, mask, weights=lam).logits)


@pytest.mark.parametrize("head_mode,adapter", [("lowrank", "shared"), ("full", "plural"), ("lowrank", "none")])
def test_export_loads_with_plain_transformers(tiny_model_dir, tmp_path, batch, head_mode, adapter):
    from transformers import AutoModelForCausalLM

    ids, mask = batch
    plural = make_plural(tiny_model_dir, head_mode, adapter)
    perturb(plural, scale=0.05)
    lam = {"helpfulness": 0.6, "humor": 0.5, "safety": -0.1}
    out = plural.export(lam, tmp_path / "export")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not plain.config.tie_word_embeddings
    with torch.no_grad():
        expected = plural(ids, mask, weights=plural.weights_tensor(lam)).logits
        got = plain(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (out / "tokenizer_config.json").exists()


def test_fused_context_matches_mixed_forward(tiny_model_dir, batch):
    ids, mask = batch
    plural = make_plural(tiny_model_dir, "lowrank", "plural")
    perturb(plural)
    lam = torch.tensor([0.25, 0.5, 0.25])
    with torch.no_grad():
        expected = plural(ids, mask, weights=lam).logits
        with plural.fused(lam) as hf:
            got = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert type(plural.head).__name__ == "PluralHead"  # restored after the block


def test_heads_are_untied_copies(tiny_model_dir):
    plural = make_plural(tiny_model_dir, "full", "none")
    emb = plural.model.get_input_embeddings().weight
    assert plural.head.heads.data_ptr() != emb.data_ptr()
    with torch.no_grad():
        plural.head.heads[0].add_(1.0)
    assert not torch.equal(plural.head.heads[0], emb)
    torch.testing.assert_close(plural.head.base_weight, emb)


@pytest.mark.parametrize(
    "weights,message",
    [
        ({"helpfulness": 1.0, "charm": 0.5}, "unknown attribute"),
        ("helpfulness=nan", "non-finite"),
        ([1.0, float("inf"), 0.0], "non-finite"),
        ([1.0, 0.0], "expected 3 weights"),
        ({"helpfulness": 0.0}, "all weights are zero"),
        ("helpfulness", "expected name=value"),
        ("humor=lots", "not a number"),
        ("humor=1,humor=2", "given twice"),
    ],
)
def test_invalid_weights_rejected(tiny_model_dir, weights, message):
    plural = make_plural(tiny_model_dir, "lowrank", "none")
    with pytest.raises(SteeringError, match=message):
        plural.weights_tensor(weights)


def test_negative_and_string_weights_accepted(tiny_model_dir):
    plural = make_plural(tiny_model_dir, "lowrank", "none")
    w = plural.weights_tensor("helpfulness=0.7,humor=0.3,safety=-0.5")
    assert w.tolist() == pytest.approx([0.7, 0.3, -0.5])


def test_missing_weights_raise_clear_error(tiny_model_dir, batch):
    ids, mask = batch
    plural = make_plural(tiny_model_dir, "lowrank", "none")
    with pytest.raises(SteeringError, match="no steering weights set"):
        plural.model(input_ids=ids, attention_mask=mask)


def test_gradient_checkpointing_recompute_uses_forward_weights(tiny_model_dir, batch):
    """Backward recomputation must see the λ of the forward pass, not whatever is set later."""
    ids, mask = batch
    grads = []
    for checkpointing in (False, True):
        plural = make_plural(tiny_model_dir, "lowrank", "plural")
        perturb(plural, scale=0.1)
        plural.train()
        if checkpointing:
            plural.gradient_checkpointing_enable()
        lam = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
        loss = plural(ids, mask, weights=lam).logits.float().logsumexp(-1).mean()
        with torch.no_grad(), plural.reference():  # a reference forward between forward and backward
            plural.model(input_ids=ids, attention_mask=mask)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in plural.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_bf16_trunk_keeps_head_in_fp32(tiny_model_dir, batch):
    ids, mask = batch
    plural = make_plural(tiny_model_dir, "lowrank", "none", dtype=torch.bfloat16)
    assert plural.head.base_weight.dtype == torch.float32
    with torch.no_grad():
        logits = plural(ids, mask, weights=torch.tensor([1.0, 0.0, 0.0])).logits
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("adapter", ["plural", "shared", "none"])
def test_adapter_layers_and_prefix_cache_match_full_forward(tiny_model_dir, adapter):
    """Adapters on the last layer only; the frozen-prefix cache gives the same hidden states and grads."""
    from cmpo.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    enc = tok(["one two three four", "be funny!"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lam = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3]])
    results = []
    for cached in (False, True, True):
        plural = make_plural(tiny_model_dir, "lowrank", adapter, adapter_layers=1)
        perturb(plural, scale=0.1)
        if adapter != "none":
            names = [n for n, p in plural.named_parameters() if p.requires_grad and "lm_head" not in n]
            assert names and all(".layers.1." in n for n in names), names  # last of 2 layers only
        if cached:
            cache = plural.enable_prefix_cache()
            plural.hidden_states(ids, mask, weights=lam)  # fill the cache
        hidden = plural.hidden_states(ids, mask, weights=lam)
        ref = plural.hidden_states(ids, mask, reference=True)
        if hidden.requires_grad:  # adapter "none": the trunk has nothing to train
            hidden[mask.bool()].pow(2).mean().backward()
        grads = {n: p.grad for n, p in plural.named_parameters() if p.grad is not None}
        results.append((hidden.detach(), ref.detach(), grads))
        if cached:
            assert cache.hits > 0
    real = mask.bool()  # padded positions are never read (masked), so only real tokens must agree
    for hidden, ref, grads in results[1:]:
        torch.testing.assert_close(hidden[real], results[0][0][real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref[real], results[0][1][real], atol=1e-5, rtol=1e-5)
        assert grads.keys() == results[0][2].keys()
        for n in grads:
            torch.testing.assert_close(grads[n], results[0][2][n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scale", [1.0, -1.5])  # Σλ = 1 (the in-place fast path) and Σλ ≠ 1
def test_lowrank_head_forward_and_gradients_match_the_naive_k_head_mix(scale):
    import torch.nn.functional as F

    from cmpo.models.layers import PluralHead, SteeringState

    torch.manual_seed(0)
    head = PluralHead(torch.randn(50, 16, dtype=torch.float64), 3, "lowrank", 4, 8.0, SteeringState(),
                      dtype=torch.float64)
    with torch.no_grad():
        head.B.normal_()
    h = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64) * scale
    g = torch.randn(2, 5, 50, dtype=torch.float64)

    def grads(logits):
        (logits * g).sum().backward()
        out = [t.grad.clone() for t in (h, head.A, head.B)]
        h.grad = head.A.grad = head.B.grad = None
        return out

    fast = head(h, w)
    fast_grads = grads(fast)
    naive = sum(w[:, None, j:j + 1] * F.linear(h, head.head_weight(j)) for j in range(3))
    assert torch.allclose(fast, naive)
    for a, b in zip(fast_grads, grads(naive)):
        assert torch.allclose(a, b)
