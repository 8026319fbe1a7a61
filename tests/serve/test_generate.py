"""SteerableModel: mixed-λ batches ≡ one by one, fused ≡ per-example mix, reference ≡ base, stop strings,
the generated-only repetition penalty, SteerLM prompts."""

from __future__ import annotations

import pytest

from cmpo.models.steering import SteeringError
from cmpo.serve.generate import (
    GenerationOptions,
    Row,
    SteerableModel,
    format_acm_attributes,
)

PROMPTS = ["hello there", "list two items: bread and milk", "What a wonderful day!",
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain bread."}]]
WEIGHTS = [{"helpfulness": 1}, {"humor": 1}, "safety=1,humor=-0.5", [0.2, 0.3, 0.5]]
GREEDY = GenerationOptions(max_new_tokens=12)


@pytest.fixture(scope="module")
def plural(plural_dir):
    return SteerableModel.load(str(plural_dir))


@pytest.mark.parametrize("which", ["plural_dir", "plural_adapter_dir"])
def test_mixed_batch_equals_one_by_one(which, request):
    sm = SteerableModel.load(str(request.getfixturevalue(which)))
    assert sm.kind == "plural" and sm.attributes == ["helpfulness", "humor", "safety"]
    mixed = sm.generate(PROMPTS, weights=WEIGHTS, options=GREEDY)  # per-example λ [B, k], left-padded
    single = [sm.generate([p], weights=w, options=GREEDY)[0] for p, w in zip(PROMPTS, WEIGHTS)]  # fused head
    assert mixed == single
    assert all(mixed)
    # Steering matters: the same prompt under different one-hot λ gives different text.
    outs = {sm.generate([PROMPTS[1]], weights={a: 1}, options=GREEDY)[0] for a in sm.attributes}
    assert len(outs) > 1


def test_reference_is_the_base_model(plural):
    base = SteerableModel.load("tiny-random")
    assert base.kind == "hf" and base.attributes == []
    ref = plural.reference()
    assert ref.model is plural.model  # shares weights
    assert ref.generate(PROMPTS, options=GREEDY) == base.generate(PROMPTS, options=GREEDY)
    with pytest.raises(SteeringError):
        ref.generate(PROMPTS[:1], weights={"humor": 1})
    with pytest.raises(SteeringError, match="hf model"):
        base.generate(PROMPTS[:1], weights={"humor": 1})


def test_weight_validation(plural):
    with pytest.raises(SteeringError, match="unknown attribute"):
        plural.generate(["hi"], weights={"bogus": 1})
    with pytest.raises(SteeringError, match="all weights are zero"):
        plural.generate(["hi"], weights=[0, 0, 0])
    with pytest.raises(ValueError, match="per-prompt"):
        plural.generate(["a", "b"], weights=[{"humor": 1}])
    # Default weights = uniform 1/k, the same as passing them explicitly.
    assert plural.generate(["hi"], options=GREEDY) == plural.generate(["hi"], weights=[1 / 3] * 3, options=GREEDY)


def test_stop_strings_and_max_tokens(plural):
    opts = GenerationOptions(max_new_tokens=16)
    full = plural.generate(["list two items: bread and milk"], weights={"humor": 1}, options=opts)[0]
    row = Row(plural.encode_prompt("list two items: bread and milk"), weights=[0.0, 1.0, 0.0], max_new_tokens=16)
    plural.generate_rows([row], opts)
    assert row.text == full
    assert (len(row.tokens), row.finish_reason) == (16, "length") or (len(row.tokens) < 16 and
                                                                        row.finish_reason == "stop")
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), "need a non-blank stop string from the middle of the output"
    cut = plural.generate(["list two items: bread and milk"], weights={"humor": 1},
                          options=GenerationOptions(max_new_tokens=16, stop=[stop]))[0]
    assert cut == full[: full.index(stop)]
    short = plural.generate(["list two items: bread and milk"], weights={"humor": 1},
                            options=GenerationOptions(max_new_tokens=3))[0]
    assert full.startswith(short) and len(short) < len(full)


def test_sampling_is_seeded(plural):
    opts = GenerationOptions(max_new_tokens=10, do_sample=True, temperature=0.9, top_k=50, seed=7)
    a = plural.generate(PROMPTS[:2], weights={"humor": 1}, options=opts)
    b = plural.generate(PROMPTS[:2], weights={"humor": 1}, options=opts)
    assert a == b


def test_repetition_penalty_changes_output_and_is_used(plural):
    plain = plural.generate(PROMPTS[:2], weights={"humor": 1}, options=GenerationOptions(max_new_tokens=16))
    pen = plural.generate(PROMPTS[:2], weights={"humor": 1},
                          options=GenerationOptions(max_new_tokens=16, repetition_penalty=3.0))
    assert pen != plain


def test_steerlm_prompt_and_generation(steerlm_dir):
    sm = SteerableModel.load(str(steerlm_dir))
    assert sm.kind == "steerlm" and sm.attributes == ["helpfulness", "humor"]
    text = sm.prompt_text("hi", {"humor": 4})
    assert text == sm.template.render_prompt("hi") + "helpfulness:0,humor:4\n"
    assert format_acm_attributes({"helpfulness": 3, "humor": 1}, sm.attributes) == "helpfulness:3,humor:1"
    with pytest.raises(SteeringError, match="unknown"):
        sm.generate(["hi"], attributes={"bogus": 1})
    with pytest.raises(SteeringError):
        sm.generate(["hi"], weights={"humor": 1})
    batch = sm.generate(["hi", "hi"], attributes=[{"humor": 4}, {"helpfulness": 4}], options=GREEDY)
    assert batch == [sm.generate(["hi"], attributes=a, options=GREEDY)[0]
                     for a in ({"humor": 4}, {"helpfulness": 4})]
