"""Trainer invariants on the tiny model: grad accumulation ≡ big batch, resume ≡ uninterrupted, outputs, CLI."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from cmpo.train import runs
from cmpo.train.config import RunConfig


def _cfg(tmp: Path, tiny: str, **train) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.model.head_rank, cfg.model.lora_rank = tiny, 4, 4
    cfg.data.max_length, cfg.data.max_prompt_length = 48, 24
    t = cfg.train
    t.learning_rate, t.logging_steps, t.disable_tqdm, t.save_steps = 1e-3, 1, True, 1000
    t.output_dir = str(tmp / "ckpt")
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


def _losses(result):
    return [h["loss"] for h in result.log_history if "loss" in h]


def test_gradient_accumulation_4x1_equals_batch_4(tmp_path, prepared, tiny_model_dir):
    big = runs.run_cmpo(_cfg(tmp_path / "a", tiny_model_dir, per_device_train_batch_size=4, max_steps=3),
                        prepared, tmp_path / "a" / "out")
    acc = runs.run_cmpo(_cfg(tmp_path / "b", tiny_model_dir, per_device_train_batch_size=1,
                             gradient_accumulation_steps=4, max_steps=3), prepared, tmp_path / "b" / "out")
    lb, la = _losses(big), _losses(acc)
    assert len(lb) == 3 and lb[0] == pytest.approx(0.6931, abs=1e-3) and lb[-1] < lb[0]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
    wa = load_file(tmp_path / "a" / "out" / "plural.safetensors")
    wb = load_file(tmp_path / "b" / "out" / "plural.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=k)


class _Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated kill")


def test_resume_after_interruption_is_bitwise_identical(tmp_path, prepared, tiny_model_dir):
    kw = dict(per_device_train_batch_size=2, max_steps=5, save_steps=2)  # 6 steps/epoch: crosses no epoch
    full = runs.run_cmpo(_cfg(tmp_path / "u", tiny_model_dir, **kw), prepared, tmp_path / "u" / "out")
    cfg = _cfg(tmp_path / "k", tiny_model_dir, **kw)
    with pytest.raises(KeyboardInterrupt):
        runs.run_cmpo(cfg, prepared, tmp_path / "k" / "out", callbacks=[_Kill()])
    assert (tmp_path / "k" / "ckpt" / "checkpoint-2" / "model.safetensors").exists()
    assert not (tmp_path / "k" / "out").exists()
    resumed = runs.run_cmpo(cfg, prepared, tmp_path / "k" / "out", resume=True)
    assert _losses(resumed) == _losses(full)  # steps 1-2 come from the checkpoint's trainer state
    wu = load_file(tmp_path / "u" / "out" / "plural.safetensors")
    wk = load_file(tmp_path / "k" / "out" / "plural.safetensors")
    assert wu.keys() == wk.keys()
    for k in wu:
        assert torch.equal(wu[k], wk[k]), k


def test_sft_and_dpo_write_plain_hf_dirs(tmp_path, prepared, tiny_model_dir):
    from cmpo.models.loading import load_model
    from cmpo.train.config import load_run_config

    cfg = _cfg(tmp_path / "s", tiny_model_dir, max_steps=4, per_device_train_batch_size=2, save_steps=2,
               eval_strategy="steps", eval_steps=2)
    sft = runs.run_sft(cfg, prepared, tmp_path / "sft")
    evals = [h["eval_loss"] for h in sft.log_history if "eval_loss" in h]
    assert len(evals) == 2
    assert sft.trainer.state.best_metric == pytest.approx(min(evals))
    meta = json.loads((tmp_path / "sft" / "cmpo_model.json").read_text())
    assert meta == {"kind": "sft", "template": "chat", "base_model": tiny_model_dir}
    model, _ = load_model(str(tmp_path / "sft"))  # merged: a plain model, no peft keys
    assert not any("lora" in n for n, _ in model.named_parameters())

    dcfg = load_run_config(None, [f"model.name={tmp_path / 'sft'}", "attribute=humor", "reference.precompute=true",
                                  f"reference.cache_dir={tmp_path / 'ref'}"])
    dcfg.train = cfg.train
    dcfg.train.output_dir = str(tmp_path / "d" / "ckpt")
    dcfg.train.eval_strategy = "no"
    dpo = runs.run_dpo(dcfg, prepared, tmp_path / "dpo")
    assert len(list((tmp_path / "ref").glob("ref-*.safetensors"))) == 1
    assert _losses(dpo)[0] == pytest.approx(0.6931, abs=1e-4)  # reference = the SFT model, exactly
    assert json.loads((tmp_path / "dpo" / "cmpo_model.json").read_text())["attribute"] == "humor"


def test_cli_help_overrides_and_errors(tmp_path, prepared, tiny_model_dir, capsys):
    from cmpo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "cmpo", "--help"])
    assert e.value.code == 0
    assert "--resume" in capsys.readouterr().out
    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: cmpo\nmodel: {name: tiny-random, head_rank: 4, lora_rank: 4}\n"
                      "data: {max_length: 48, max_prompt_length: 24}\ntrain: {max_steps: 2, learning_rate: 0.001, disable_tqdm: true}\n")
    rc = main(["train", "cmpo", "--recipe", str(recipe), "--data", str(prepared), "--out", str(tmp_path / "m"),
               "train.per_device_train_batch_size=2", "model.adapter=plural"])
    assert rc == 0
    cfg = json.loads((tmp_path / "m" / "cmpo_config.json").read_text())
    assert cfg["adapter"] == "plural" and cfg["attributes"] == ["helpfulness", "humor"]
    with pytest.raises(SystemExit, match="not `sft`"):
        main(["train", "sft", "--recipe", str(recipe), "--data", str(prepared), "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="row 0: the prompt takes 24 tokens and leaves no room"):
        main(["train", "cmpo", "--recipe", str(recipe), "--data", str(prepared), "--out", str(tmp_path / "x"),
              "data.max_length=24"])
    from cmpo.recipes import RecipeError

    with pytest.raises(RecipeError, match="learnin_rate"):
        main(["train", "cmpo", "--recipe", str(recipe), "--data", str(prepared), "--out", str(tmp_path / "x"),
              "train.learnin_rate=1"])


def test_steerlm_subcommands_dispatch_or_explain(capsys):
    from cmpo.cli import main
    from cmpo.train.cli import _steerlm

    if _steerlm("steerlm-apm") is not None:
        with pytest.raises(SystemExit) as e:
            main(["train", "steerlm-apm", "--help"])
        assert e.value.code == 0
    else:
        assert main(["train", "steerlm-apm"]) == 2
        assert "cmpo.train.steerlm.run_apm" in capsys.readouterr().err


def test_warm_start_unlikelihood_is_logged_and_frozen_heads_stay_w0(tmp_path, prepared, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, max_steps=2, per_device_train_batch_size=2)
    cfg.model.adapter, cfg.model.train_heads = "plural", False
    ws = cfg.warm_start
    ws.enabled, ws.max_steps, ws.learning_rate, ws.unlikelihood_weight, ws.top_fraction = True, 2, 1e-3, 0.5, 0.5
    runs.run_cmpo(cfg, prepared, tmp_path / "out")
    state = max((Path(cfg.train.output_dir) / "warm_start").rglob("trainer_state.json"))
    log = json.loads(state.read_text())["log_history"]
    step = next(h for h in log if "unlikelihood_per_token" in h)
    assert step["unlikelihood_per_token"] > 0
    # the logged loss is the per-token NLL plus γ × the per-token unlikelihood term
    assert step["loss"] == pytest.approx(step["nll_per_token"] + 0.5 * step["unlikelihood_per_token"], rel=1e-3)
    sd = load_file(str(tmp_path / "out" / "plural.safetensors"))
    assert not sd["model.lm_head.B"].any()  # heads never trained: every W_j is still W0
    assert any(v.any() for k, v in sd.items() if k.endswith("plural_B"))
    cfg.model.adapter = "none"
    with pytest.raises(ValueError, match="nothing to train"):
        runs.run_cmpo(cfg, prepared, tmp_path / "none")


def test_chosen_unlikelihood_adds_gamma_times_per_token_term(tiny_model_dir):
    from types import SimpleNamespace

    from cmpo.models.plural import PluralConfig, PluralLM
    from cmpo.train.logprobs import collate_sequences, token_logprobs_unlikelihood
    from cmpo.train.trainers import PolicyModel, PreferenceTrainer

    plural = PluralLM.from_base(tiny_model_dir, PluralConfig(["a", "b"], adapter="plural", head_rank=4,
                                                            adapter_rank=4))
    policy = PolicyModel(plural, chunk_size=4)
    b = collate_sequences([[5, 6], [7, 8, 9], [5, 6], [7, 8, 9]],
                          [[20, 21, 20, 2], [22, 22, 23, 22, 2], [30, 2], [31, 32, 2]], pad_id=2)
    inputs = {**b, "weights": torch.tensor([[1.0, 0.0], [0.5, 0.5]])}

    def trainer(gamma):
        return SimpleNamespace(beta=0.5, epsilon=0.0, loss_type="sigmoid", chosen_nll_weight=1.0,
                               chosen_unlikelihood_weight=gamma)

    with torch.no_grad():
        plain, _ = PreferenceTrainer.pair_loss(trainer(0.0), policy, dict(inputs))
        with_ul, metrics = PreferenceTrainer.pair_loss(trainer(2.0), policy, dict(inputs))
        _, ul, rows = token_logprobs_unlikelihood(plural, b["input_ids"][:2], b["attention_mask"][:2],
                                                  b["response_mask"][:2], weights=inputs["weights"])
    per_token = torch.zeros(2).index_add(0, rows, ul) / torch.tensor([4.0, 5.0])
    assert per_token.gt(0).all()  # both chosen responses repeat a token
    torch.testing.assert_close(metrics["unlikelihood/chosen_per_token"], per_token)
    torch.testing.assert_close(with_ul - plain, 2.0 * per_token)
