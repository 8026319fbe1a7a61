"""`cmpo export`: the plain HF checkpoint's logits equal the plural model's under λ (shared LoRA and plural
adapters), it loads with no cmpo code, carries the chat template, and generates like the plural model."""

from __future__ import annotations

import json

import pytest
import torch

from cmpo.cli import main

LAMBDA = {"helpfulness": 0.7, "humor": 0.5, "safety": -0.2}


@pytest.mark.parametrize("which", ["plural_dir", "plural_adapter_dir"])
def test_export_logits_equal_plural(which, request, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cmpo.models.plural import PluralLM

    src = request.getfixturevalue(which)
    out = tmp_path / "export"
    assert main(["export", "--model", str(src), "--weights", "helpfulness=0.7,humor=0.5,safety=-0.2",
                 "--out", str(out)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "im_start" in tok.chat_template
    assert plain.config.tie_word_embeddings is False
    assert json.loads((out / "cmpo_model.json").read_text())["weights"] == LAMBDA

    plural = PluralLM.load(src).to(torch.float64)
    enc = tok(["hello there, how are you?", "list two items"], return_tensors="pt", padding=True)
    lam = torch.tensor(list(LAMBDA.values()), dtype=torch.float64)
    with torch.no_grad():
        got = plain(**enc).logits
        want = plural(enc["input_ids"], enc["attention_mask"], weights=lam).logits
        other = plural(enc["input_ids"], enc["attention_mask"], weights=torch.tensor([1.0, 0, 0])).logits
    mask = enc["attention_mask"].bool()
    scale = want[mask].abs().max()
    # Export stores fp32 weights (merged in float64): relative error ~1e-7, far below the λ effect.
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5 * scale, rtol=0)
    assert (other[mask] - want[mask]).abs().max() > 1e-2 * scale


def test_export_generates_like_plural_and_refuses_overwrite(plural_dir, tmp_path, capsys):
    from cmpo.serve.generate import GenerationOptions, SteerableModel

    out = tmp_path / "export"
    assert main(["export", "--model", str(plural_dir), "--weights", "humor=1", "--out", str(out)]) == 0
    exported = SteerableModel.load(str(out))
    assert exported.kind == "hf" and exported.template.name == "chat"
    opts = GenerationOptions(max_new_tokens=12)
    prompts = ["hello there", "list two items: bread and milk"]
    assert exported.generate(prompts, options=opts) == SteerableModel.load(str(plural_dir)).generate(
        prompts, weights={"humor": 1}, options=opts)
    assert main(["export", "--model", str(plural_dir), "--weights", "humor=1", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", "--model", str(plural_dir), "--weights", "humor=0", "--out", str(tmp_path / "z")]) == 2
    assert not (tmp_path / "z").exists()
