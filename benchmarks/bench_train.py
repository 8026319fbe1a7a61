"""Training throughput (pairs/s), peak memory and achieved FLOP/s ("MFU") of one preference-training step.

    python benchmarks/bench_train.py --model smollm2-135m --threads 1 --batch 2 --prompt-len 64 --response-len 64
    python benchmarks/bench_train.py --model random-llama:1b --device cuda --dtype bfloat16   # GPU, no trl

Configurations (``--configs``, comma-separated): ``dpo`` (cmpo single-attribute cDPO: peft LoRA + PolicyModel +
PreferenceTrainer), ``cmpo-<head>-k<k>`` (PluralLM, shared LoRA adapter, head lowrank|full, k attributes,
per-example λ), ``trl`` (TRL ``DPOTrainer``, loss_type sigmoid, same LoRA; skipped when trl is missing).
Every configuration trains the same model on the same token ids: ``batch`` pairs of a ``prompt-len``-token
prompt and two ``response-len``-token responses, LoRA r=16 α=32 on q/k/v/o, AdamW lr 5e-6, fp32 (CPU).

A step = the trainer's own ``Trainer.training_step`` (its ``compute_loss``: policy forward, reference forward
with adapters off, loss, backward) + ``optimizer.step()`` + ``zero_grad``. Rounds alternate the configurations
(order reversed every other round); in each round a configuration is built fresh, runs ``--warmup`` steps
(excluded), then ``--steps`` timed steps. Peak memory = peak growth (CPU: RSS sampled; CUDA:
max_memory_allocated) while building the model + optimizer and running the steps.

FLOPs: model FLOPs per step = 6·N·tokens = 2·N (policy forward) + 2·N (backward through the frozen trunk: input
gradients only; LoRA weight gradients are negligible) + 2·N (reference forward), N = trunk Linear parameters + one
V·d LM head, tokens = 2·batch·(prompt+response). cmpo runs the head on response positions only, so for cmpo this
overcounts the head term (~10 % of N·tokens for SmolLM2 at prompt = response length). The same base-model count
is used for every configuration (k heads are not counted), so MFU ratios equal throughput ratios. Peak =
best [2048,2048] matmul FLOP/s in the same dtype, same process and thread count.

Prints one JSON line per (round, configuration), then one ``"summary"`` line per configuration, the ratios
and the peak matmul FLOP/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    PeakMemory,
    add_common_arguments,
    emit,
    is_random,
    load_base,
    matmul_params,
    peak_matmul_flops,
    release_memory,
    setup,
    summary,
    timer,
    versions,
)

LORA = dict(r=16, alpha=32.0, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
LR = 5e-6


def synthetic_rows(n: int, prompt_len: int, response_len: int, vocab: int, k: int | None, seed: int):
    """``n`` pairs of random token ids (ids ≥ 3 avoid special tokens) with fixed lengths; λ per row if k."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (prompt_len + 2 * response_len,), generator=g).tolist()
        row = {"prompt_ids": ids[:prompt_len], "chosen_ids": ids[prompt_len:prompt_len + response_len],
               "rejected_ids": ids[prompt_len + response_len:]}
        if k:
            w = torch.rand(k, generator=g) + 0.05
            row["weights"] = (w / w.sum()).tolist()
        rows.append(row)
    return rows


def _args(out_dir: str, batch: int, device: torch.device, bf16: bool):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=out_dir, learning_rate=LR, weight_decay=0.01, lr_scheduler_type="constant",
                             optim="adamw_torch", per_device_train_batch_size=batch, report_to="none",
                             remove_unused_columns=False, use_cpu=device.type != "cuda", bf16=bf16,
                             disable_tqdm=True, save_strategy="no", logging_strategy="no")


def build_cmpo_dpo(a, device, dtype, out_dir):
    """cmpo single-attribute cDPO exactly as ``run_dpo`` sets it up (LoRA via ``runs._lora``)."""
    from cmpo.train.config import RunConfig
    from cmpo.train.data import PairCollator
    from cmpo.train.runs import _lora
    from cmpo.train.trainers import PolicyModel, PreferenceTrainer

    model, tok = load_base(a.model, dtype, device, a.seed)
    cfg = RunConfig()
    cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_targets = LORA["r"], LORA["alpha"], LORA["targets"]
    model = _lora(model, cfg)
    policy = PolicyModel(model, cfg.train.logprob_chunk_size).to(device)
    pad = tok.pad_token_id if tok is not None else 0
    trainer = PreferenceTrainer(model=policy, args=_args(out_dir, a.batch, device, False),
                                data_collator=PairCollator(pad), beta=0.5, epsilon=0.1)
    return trainer, PairCollator(pad), None


def build_cmpo_plural(a, device, dtype, out_dir, head_mode: str, k: int):
    """CMPO as ``run_cmpo``/``build_plural`` set it up: PluralLM with the thesis's shared LoRA + k heads."""
    from cmpo.models.plural import PluralConfig, PluralLM
    from cmpo.train.data import PairCollator
    from cmpo.train.trainers import PolicyModel, PreferenceTrainer

    model, tok = load_base(a.model, dtype, device, a.seed)
    pc = PluralConfig(attributes=[f"attr{j}" for j in range(k)], head_mode=head_mode, head_rank=16,
                      head_alpha=16.0, adapter="shared", adapter_rank=LORA["r"], adapter_alpha=LORA["alpha"],
                      adapter_targets=list(LORA["targets"]), base_model=a.model)
    plural = PluralLM.from_base(model, pc)
    plural.tokenizer = tok
    policy = PolicyModel(plural, 1024).to(device)
    pad = tok.pad_token_id if tok is not None else 0
    collator = PairCollator(pad, with_weights=True)
    trainer = PreferenceTrainer(model=policy, args=_args(out_dir, a.batch, device, False), data_collator=collator,
                                beta=0.5, epsilon=0.1, attributes=pc.attributes)
    return trainer, collator, k


def build_trl(a, device, dtype, out_dir):
    """TRL DPOTrainer with the same LoRA; defaults that differ from TrainingArguments set explicitly."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    model, tok = load_base(a.model, dtype, device, a.seed)
    cfg = DPOConfig(output_dir=out_dir, loss_type="sigmoid", beta=0.5, learning_rate=LR, weight_decay=0.01,
                    lr_scheduler_type="constant", optim="adamw_torch", gradient_checkpointing=False, bf16=False,
                    per_device_train_batch_size=a.batch, max_length=None, report_to="none",
                    use_cpu=device.type != "cuda", disable_tqdm=True, save_strategy="no", logging_strategy="no")
    ds = Dataset.from_dict({"prompt": ["Hello"] * 2, "chosen": [" yes"] * 2, "rejected": [" no"] * 2})
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=list(LORA["targets"]), bias="none",
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    torch.manual_seed(0)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    return trainer, trainer.data_collator, None


def build(name: str, a, device, dtype, out_dir):
    if name == "dpo":
        return build_cmpo_dpo(a, device, dtype, out_dir)
    if name == "trl":
        return build_trl(a, device, dtype, out_dir)
    if name.startswith("cmpo-"):
        _, head, kk = name.split("-")
        return build_cmpo_plural(a, device, dtype, out_dir, head, int(kk.lstrip("k")))
    raise SystemExit(f"unknown configuration {name!r}")


def step(trainer) -> None:
    """One real training step through the trainer's own code path."""
    trainer.training_step(trainer.model, trainer._bench_batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def measure(name: str, a, device, dtype, vocab: int) -> dict:
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cmpo-bench-") as out_dir, PeakMemory(device) as mem:
        trainer, collator, k = build(name, a, device, dtype, out_dir)
        rows = synthetic_rows(a.batch, a.prompt_len, a.response_len, vocab, k, a.seed)
        if name == "trl":
            rows = [{kk: v for kk, v in r.items() if kk != "weights"} for r in rows]
        trainer._bench_batch = collator(rows)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we drive steps ourselves
        trainer.model.train()
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        for i in range(a.warmup + a.steps):
            if i < a.warmup:
                step(trainer)
            else:
                with timer(device, times):
                    step(trainer)
        del trainer
    release_memory()
    s = statistics.median(times)
    return {"config": name, "seconds_per_step": s, "step_times": times, "pairs_per_s": a.batch / s,
            "peak_mem_mib": mem.peak_mib, "trainable_params": trainable}


def _preimport(configs) -> None:
    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401

    import cmpo.models.plural
    import cmpo.train.runs
    import cmpo.train.trainers  # noqa: F401
    if "trl" in configs:
        import datasets  # noqa: F401
        import trl  # noqa: F401
        from trl import DPOTrainer  # noqa: F401


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--configs", default="dpo,trl,cmpo-lowrank-k2,cmpo-lowrank-k5,cmpo-lowrank-k9,"
                                         "cmpo-full-k2,cmpo-full-k5,cmpo-full-k9")
    ap.add_argument("--batch", type=int, default=2, help="pairs per step")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--full-rounds", type=int, default=None,
                    help="rounds for full-head configurations (slow on CPU; default: --rounds)")
    add_common_arguments(ap)
    a = ap.parse_args(argv)
    device = setup(a)
    dtype = getattr(torch, a.dtype)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    if "trl" in configs:
        try:
            import trl  # noqa: F401
        except ImportError:
            configs.remove("trl")
            emit({"bench": "train", "skipped": "trl", "why": "trl is not installed"})
        if is_random(a.model) and "trl" in configs:
            configs.remove("trl")
            emit({"bench": "train", "skipped": "trl", "why": "random model has no tokenizer"})
    _preimport(configs)  # library import memory must not count against the first configuration
    probe, _ = load_base(a.model, dtype, torch.device("cpu") if device.type == "cpu" else device, a.seed)
    n_params, head_params = matmul_params(probe)
    vocab = probe.get_output_embeddings().weight.shape[0]
    del probe
    release_memory()
    peak = peak_matmul_flops(device, dtype, n=8192 if device.type == "cuda" else 2048)
    tokens = 2 * a.batch * (a.prompt_len + a.response_len)
    flops_step = 6 * n_params * tokens
    emit({"bench": "train", "kind": "setup", "model": a.model, "dtype": a.dtype, "device": str(device),
          "threads": a.threads, "batch_pairs": a.batch, "prompt_len": a.prompt_len, "response_len": a.response_len,
          "tokens_per_step": tokens, "matmul_params_N": n_params, "head_params": head_params,
          "model_flops_per_step": flops_step, "flops_formula": "6*N*tokens (2N policy fwd + 2N backward through the frozen trunk + 2N reference fwd)",
          "peak_matmul_flops": peak, "versions": versions()})
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(a.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        if a.full_rounds is not None and r >= a.full_rounds:
            order = [c for c in order if not c.startswith("cmpo-full-")]
        for c in order:
            res = measure(c, a, device, dtype, vocab)
            results[c].append(res)
            emit({"bench": "train", "kind": "round", "round": r, **res})
    summ = {}
    for c, rs in results.items():
        spp = summary([x["seconds_per_step"] for x in rs] if len(rs) > 1 else rs[0]["step_times"])
        pairs = a.batch / spp["median"]
        achieved = flops_step / spp["median"]
        summ[c] = {"pairs_per_s": pairs, "pairs_per_s_best": a.batch / spp["best"],
                   "peak_mem_mib": max(x["peak_mem_mib"] for x in rs), "achieved_flops": achieved,
                   "mfu": achieved / peak}
        emit({"bench": "train", "kind": "summary", "config": c, "seconds_per_step": spp, **summ[c]})
    ratios = {}
    for c in summ:
        if c.startswith("cmpo-") and "dpo" in summ:
            ratios[f"{c}/dpo pairs_per_s"] = summ[c]["pairs_per_s"] / summ["dpo"]["pairs_per_s"]
            ratios[f"{c}/dpo peak_mem"] = summ[c]["peak_mem_mib"] / max(summ["dpo"]["peak_mem_mib"], 1e-9)
        if c.startswith("cmpo-") and "trl" in summ:
            ratios[f"{c}/trl pairs_per_s"] = summ[c]["pairs_per_s"] / summ["trl"]["pairs_per_s"]
    if "dpo" in summ and "trl" in summ:
        ratios["dpo/trl pairs_per_s"] = summ["dpo"]["pairs_per_s"] / summ["trl"]["pairs_per_s"]
        ratios["trl/dpo peak_mem"] = summ["trl"]["peak_mem_mib"] / max(summ["dpo"]["peak_mem_mib"], 1e-9)
    emit({"bench": "train", "kind": "ratios", **ratios})


if __name__ == "__main__":
    main()
