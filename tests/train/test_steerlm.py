"""SteerLM baseline: attribute strings, APM (shapes, loss, pooling, metrics, save/load), relabel resume, ACM."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpo.models.steering import SteeringError
from cmpo.train.steerlm import format_attributes, parse_attributes

# ---------------------------------------------------------------------- attribute strings

names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Z", "Cc"), blacklist_characters=",:"),
                min_size=1, max_size=12)
values = st.one_of(st.integers(min_value=0, max_value=4), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=False, allow_infinity=False, width=64))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, values), min_size=1, max_size=9, unique_by=lambda t: t[0]), st.booleans())
def test_attribute_string_round_trips_exactly(items, with_prefix):
    attrs = [a for a, _ in items]
    vals = dict(items)
    prefix = "<extra_id_2>" if with_prefix else ""
    s = format_attributes(vals, attrs, prefix=prefix)
    back = parse_attributes(s, attrs, prefix=prefix)
    assert list(back) == attrs
    for a in attrs:
        assert back[a] == vals[a]
        if isinstance(vals[a], int) or float(vals[a]).is_integer():
            assert isinstance(back[a], int)
    assert format_attributes(back, attrs, prefix=prefix) == s  # string -> dict -> string is the identity too


def test_attribute_string_format():
    attrs = ["helpfulness", "correctness", "humor"]
    assert format_attributes({"helpfulness": 4, "correctness": 3.0}, attrs) == "helpfulness:4,correctness:3,humor:0"
    assert format_attributes({"humor": 2.5}, attrs, prefix="<extra_id_2>") == \
        "<extra_id_2>helpfulness:0,correctness:0,humor:2.5"
    assert parse_attributes("helpfulness:4,correctness:3,humor:0\n") == {"helpfulness": 4, "correctness": 3, "humor": 0}
    with pytest.raises(SteeringError, match="unknown SteerLM attribute"):
        format_attributes({"toxicity": 1}, attrs)
    with pytest.raises(SteeringError, match="finite"):
        format_attributes({"humor": math.nan}, attrs)
    with pytest.raises(SteeringError, match="no value"):
        format_attributes({"humor": 1}, attrs, default=None)
    with pytest.raises(SteeringError, match="bad SteerLM attribute name"):
        format_attributes({}, ["a,b"])
    with pytest.raises(SteeringError, match="expected"):
        parse_attributes("humor:1,helpfulness:2", ["helpfulness", "humor"])
    with pytest.raises(SteeringError, match="not a number"):
        parse_attributes("humor:lots")
    with pytest.raises(SteeringError, match="twice"):
        parse_attributes("humor:1,humor:2")


# ---------------------------------------------------------------------- APM maths


def test_apm_loss_ignores_missing_labels_hand_computed():
    from cmpo.train.steerlm_apm import apm_loss

    out = torch.tensor([[[0.0, 1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0]],
                        [[0.0, 0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 1.0, 0.0, 0.0]]])  # [B=2, k=2, C=5]
    labels = torch.tensor([[1.0, math.nan], [3.6, 2.0]])  # 3.6 -> class 4; one label missing
    lse = [math.log(math.e + 4), math.log(math.e**3 + 4), math.log(math.e + 4)]
    expected = ((lse[0] - 1) + (lse[1] - 3) + (lse[2] - 1)) / 3
    assert apm_loss(out, labels, "classification", 5).item() == pytest.approx(expected, rel=1e-6)
    reg = torch.tensor([[1.5, 9.0], [3.0, 2.5]])
    assert apm_loss(reg, labels, "regression", 5).item() == pytest.approx((0.25 + 0.36 + 0.25) / 3, rel=1e-6)
    none = torch.full((2, 2), math.nan)
    assert apm_loss(out, none, "classification", 5).item() == 0.0


def test_apm_metrics_hand_computed():
    from cmpo.train.steerlm_apm import apm_metrics

    probs = torch.zeros(4, 1, 5)
    for i, c in enumerate([0, 2, 2, 4]):
        probs[i, 0, c] = 1.0
    scores = torch.tensor([[0.0], [2.0], [2.0], [4.0]])
    labels = torch.tensor([[0.0], [2.0], [3.0], [math.nan]])
    train = torch.tensor([[3.0], [3.0], [1.0], [math.nan]])
    m = apm_metrics(probs, scores, labels, train, ["a"])["a"]
    assert m == {"n": 3, "majority_class": 3, "accuracy": pytest.approx(2 / 3), "mae": pytest.approx(1 / 3),
                 "majority_accuracy": pytest.approx(1 / 3), "majority_mae": pytest.approx(4 / 3)}


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from cmpo.models.loading import load_model

    return load_model(tiny_model_dir)


@pytest.mark.parametrize("objective", ["classification", "regression"])
def test_apm_distributions_shape_and_normalised(tiny_lm, objective):
    from cmpo.train.steerlm_apm import AttributePredictor

    lm, _ = tiny_lm
    torch.manual_seed(0)
    model = AttributePredictor(lm, ["a", "b", "c"], objective).eval()
    ids = torch.randint(3, 400, (4, 7))
    with torch.no_grad():
        probs, scores = model.distribution(model(ids, torch.ones_like(ids)))
    assert probs.shape == (4, 3, 5) and scores.shape == (4, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 3))
    assert (probs >= 0).all()
    if objective == "classification":
        torch.testing.assert_close(scores, (probs * torch.arange(5.0)).sum(-1))


def test_apm_pools_last_real_token_whatever_the_padding(tiny_lm):
    from cmpo.train.steerlm_apm import AttributePredictor

    lm, _ = tiny_lm
    model = AttributePredictor(lm, ["a"]).eval()
    seq = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        alone = model.pool(seq, torch.ones_like(seq))
        full = lm.model(input_ids=seq).last_hidden_state[:, -1]
        right = model.pool(torch.tensor([[5, 17, 42, 99, 7, 2, 2]]), torch.tensor([[1, 1, 1, 1, 1, 0, 0]]))
    torch.testing.assert_close(alone, full)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- APM training, save/load, relabel


def _apm_cfg(trunk="lora", **train):
    from cmpo.train.steerlm_apm import APMRunConfig

    cfg = APMRunConfig.load(None, [f"apm.trunk={trunk}", "model.name=tiny-random", "data.max_length=64",
                                   "train.learning_rate=0.01", "train.max_steps=3", "train.logging_steps=1",
                                   "train.per_device_train_batch_size=4", "train.disable_tqdm=true",
                                   "model.lora_rank=4"] + [f"train.{k}={v}" for k, v in train.items()])
    return cfg


def test_apm_trains_saves_and_scores_like_before_saving(tmp_path, prepared):
    from datasets import load_from_disk

    from cmpo.train.steerlm_apm import APM, train_apm

    cfg = _apm_cfg("lora")
    cfg.train.output_dir = str(tmp_path / "ckpt")
    out = train_apm(cfg, prepared, tmp_path / "apm")
    info = json.loads((out / "cmpo_model.json").read_text())
    assert info["kind"] == "steerlm-apm" and info["attributes"] == ["helpfulness", "humor"]
    metrics = json.loads((out / "apm_metrics.json").read_text())["validation"]
    assert set(metrics) == {"helpfulness", "humor"}
    assert {"accuracy", "mae", "majority_accuracy", "majority_class"} <= set(metrics["humor"])
    assert (out / "config.json").exists()  # the LoRA-merged trunk was saved

    apm = APM.load(out)
    rows = load_from_disk(str(prepared / "sft"))["validation"]
    pred = apm.predict(rows["prompt"], rows["response"], batch_size=2)
    assert pred.probs.shape == (len(rows), 2, 5) and pred.scores.shape == (len(rows), 2)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(len(rows), 2))
    # one-at-a-time scoring (no padding) agrees with batched, length-sorted scoring
    single = torch.cat([apm.predict([p], [r]).probs for p, r in zip(rows["prompt"], rows["response"])])
    torch.testing.assert_close(single, pred.probs, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def frozen_apm(tmp_path_factory):
    from cmpo.train.steerlm_apm import train_apm
    from tests.train.conftest import make_prepared

    root = tmp_path_factory.mktemp("apm")
    data = make_prepared(root / "prepared", n_pairs=22)
    cfg = _apm_cfg("frozen")
    cfg.train.output_dir = str(root / "ckpt")
    return train_apm(cfg, data, root / "apm"), data


def test_frozen_apm_saves_only_heads(frozen_apm):
    apm_dir, _ = frozen_apm
    assert not (apm_dir / "config.json").exists()
    from safetensors.torch import load_file

    assert set(load_file(apm_dir / "apm_head.safetensors")) == {"weight", "bias"}


def test_relabel_resumes_without_duplicating_or_losing_rows(tmp_path, frozen_apm, monkeypatch):
    from datasets import load_from_disk

    from cmpo.train.steerlm_apm import APM
    from cmpo.train.steerlm_relabel import relabel

    apm_dir, data = frozen_apm
    apm = APM.load(apm_dir)
    ref = relabel(apm_dir, data, tmp_path / "ref", batch_size=3, shard_size=4, apm=apm, progress=False)

    calls = {"n": 0}
    real_predict = APM.predict

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_predict(self, *a, **k)

    monkeypatch.setattr(APM, "predict", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        relabel(apm_dir, data, out, batch_size=3, shard_size=4, apm=apm, progress=False)
    assert not out.exists()  # nothing half-written at the final path
    assert len(list((tmp_path / "out.partial" / "train").glob("shard-*.json"))) == 2

    calls["n"] = 10  # no more failures; count how many shards the resumed run scores
    relabel(apm_dir, data, out, batch_size=3, shard_size=4, apm=apm, progress=False)
    src = load_from_disk(str(data / "sft"))
    n_shards = sum(math.ceil(len(src[s]) / 4) for s in src)
    assert calls["n"] - 10 == n_shards - 2  # finished shards were not redone
    assert not (tmp_path / "out.partial").exists()

    got, want = load_from_disk(str(out / "sft")), load_from_disk(str(ref / "sft"))
    for s in src:
        assert got[s]["prompt_id"] == src[s]["prompt_id"]  # same rows, same order, no duplicates
        assert got[s]["ratings"] == want[s]["ratings"]
        assert got[s]["ratings_original"] == src[s]["ratings"]
        for r in got[s]["ratings"]:
            v = json.loads(r)
            assert list(v) == ["helpfulness", "humor"] and all(isinstance(x, int) and 0 <= x <= 4 for x in v.values())
    assert json.loads((out / "meta.json").read_text())["attributes"] == ["helpfulness", "humor"]


def test_relabel_refuses_partial_work_of_other_inputs(tmp_path, frozen_apm):
    from cmpo.train.steerlm_relabel import _write_json_atomic, relabel

    apm_dir, data = frozen_apm
    _write_json_atomic(tmp_path / "out.partial" / "progress.json", {"shard_size": 99})
    with pytest.raises(ValueError, match="different inputs"):
        relabel(apm_dir, data, tmp_path / "out", shard_size=4, progress=False)


# ---------------------------------------------------------------------- ACM


@pytest.mark.parametrize("prefix", ["", "<extra_id_2>"])
def test_acm_trains_and_generates_through_steerable_model(tmp_path, prepared, prefix):
    from cmpo.serve.generate import GenerationOptions, SteerableModel
    from cmpo.train.steerlm_acm import ACMRunConfig, train_acm

    cfg = ACMRunConfig.load(None, ["model.name=tiny-random", "train.max_steps=2", "train.learning_rate=0.001",
                                   "train.disable_tqdm=true", "model.lora_rank=4", "data.max_length=64"])
    cfg.acm.attribute_prefix = prefix
    cfg.train.output_dir = str(tmp_path / "ckpt")
    out = train_acm(cfg, prepared, tmp_path / "acm")
    info = json.loads((out / "cmpo_model.json").read_text())
    assert info["kind"] == "steerlm-acm" and info["attributes"] == ["helpfulness", "humor"]
    assert info["attribute_prefix"] == prefix

    sm = SteerableModel.load(str(out))
    assert sm.kind == "steerlm"
    prompt = [{"role": "user", "content": "Tell me a joke."}]
    text = sm.prompt_text(prompt, {"humor": 4})
    assert text.endswith(f"<|im_start|>assistant\n{prefix}helpfulness:0,humor:4\n")
    outs = sm.generate([prompt, prompt], attributes=[{"humor": 4}, {"helpfulness": 4}],
                       options=GenerationOptions(max_new_tokens=4))
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)


def test_acm_training_text_puts_attributes_after_the_assistant_turn(prepared):
    from datasets import load_from_disk

    from cmpo.data.templates import PromptTemplate
    from cmpo.models.loading import load_tokenizer
    from cmpo.train.steerlm_acm import ACMConfig, tokenize_acm

    tok = load_tokenizer("tiny-random")
    template = PromptTemplate.resolve("thesis", tok)
    template.attribute_prefix = "<extra_id_2>"
    ds = load_from_disk(str(prepared / "sft"))["train"].select(range(2))
    ds = ds.map(lambda r: {"ratings": json.dumps({"helpfulness": 3.6, "humor": 0.2})})
    enc = tokenize_acm(ds, template, ["helpfulness", "humor"], ACMConfig(), 512, 256, "test")
    text = tok.decode(enc[0]["prompt_ids"])
    assert text.endswith("<extra_id_1>Assistant\n<extra_id_2>helpfulness:4,humor:0\n")
    bad = ds.map(lambda r: {"ratings": json.dumps({"helpfulness": 3})})
    with pytest.raises(ValueError, match=r"test row 0: field 'ratings' lacks"):
        tokenize_acm(bad, template, ["helpfulness", "humor"], ACMConfig(), 512, 256, "test")
    assert len(tokenize_acm(bad.select([0]).map(lambda r: {"ratings": json.dumps({"helpfulness": 1, "humor": 1})}),
                            template, ["helpfulness", "humor"], ACMConfig(), 512, 256, "t")) == 1


def test_steerlm_cli_help(capsys):
    from cmpo.cli import main

    for argv in (["train", "steerlm-apm", "--help"], ["train", "steerlm-acm", "--help"],
                 ["steerlm", "relabel", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--apm" in capsys.readouterr().out
