"""End-to-end runs: ``RunConfig`` + prepared data -> trained model directory (``cmpo train sft|dpo|cmpo``).

Outputs (docs/DEVELOPING.md): SFT/DPO -> a plain HF safetensors dir (LoRA merged) + ``cmpo_model.json``;
CMPO -> ``PluralLM.save`` (``cmpo_config.json`` + ``plural.safetensors``). Checkpoints and logs go to
``train.output_dir`` (default ``<out>.checkpoints``), never inside the final model directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmpo.train.config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out: Path
    log_history: list[dict] = field(default_factory=list)
    trainer: object = None
    negatives: list[dict] = field(default_factory=list)  # cmpo: per round, NegativeSearch.counts


# ---------------------------------------------------------------------- helpers


def _dtype(name: str) -> torch.dtype:
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ValueError(f"model.dtype: unknown torch dtype {name!r}") from None


def _training_args(cfg: RunConfig, out: Path, **override):
    from transformers import TrainingArguments

    t = cfg.train
    kwargs = dict(
        output_dir=t.output_dir or f"{out}.checkpoints",
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps, optim=t.optim, max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, logging_steps=t.logging_steps,
        eval_strategy=t.eval_strategy, eval_steps=t.eval_steps, save_strategy=t.save_strategy,
        save_steps=t.save_steps, save_total_limit=t.save_total_limit, seed=t.seed, bf16=t.bf16, fp16=t.fp16,
        report_to=t.report_to, run_name=t.run_name, dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
    )
    if t.disable_tqdm is not None:
        kwargs["disable_tqdm"] = t.disable_tqdm
    kwargs.update(t.extra)
    kwargs.update(override)
    return TrainingArguments(**kwargs)


def _resume_arg(resume, output_dir: str):
    """``True`` -> the last checkpoint in ``output_dir`` (error if none); a path -> itself; falsy -> None."""
    if not resume:
        return None
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise FileNotFoundError(f"--resume: no checkpoint-* directory in {output_dir}")
        return last
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume: checkpoint {resume} not found")
    return str(resume)


def _template(cfg: RunConfig, tokenizer, meta: dict):
    from cmpo.data.templates import PromptTemplate

    return PromptTemplate.resolve(cfg.model.template or meta.get("template"), tokenizer)


def _limit(ds, n):
    return ds.select(range(min(n, len(ds)))) if n is not None else ds


def _eval_split(dd, cfg: RunConfig):
    name = cfg.data.eval_split
    if name and name in dd and len(dd[name]) > 0:
        return _limit(dd[name], cfg.data.max_eval_samples)
    return None


def _lora(model, cfg: RunConfig):
    from peft import LoraConfig, get_peft_model

    m = cfg.model
    if m.full_finetune:
        model.requires_grad_(True)
        return model
    lora = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=list(m.lora_targets), bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(m.init_seed)
    return get_peft_model(model, lora)


def save_hf_model(model, tokenizer, out: Path, meta: dict) -> Path:
    """Merge LoRA (if any) and write a plain HF safetensors dir + ``cmpo_model.json`` atomically."""
    try:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            model = model.merge_and_unload()
    except ImportError:  # pragma: no cover
        pass
    from cmpo.io import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "cmpo_model.json").write_text(json.dumps(meta, indent=2))
    return out


def _write_run_info(args_dir: str, cfg: RunConfig, is_main: bool) -> None:
    if is_main:
        Path(args_dir).mkdir(parents=True, exist_ok=True)
        (Path(args_dir) / "cmpo_run.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))


def _reference_cache_file(cfg: RunConfig, ds, split_name: str) -> Path:
    from cmpo.models.loading import cache_dir

    key = json.dumps({"data": ds._fingerprint, "model": _model_key(cfg), "split": split_name,
                      "dtype": cfg.model.dtype}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    root = Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else cache_dir() / "reference"
    return root / f"ref-{digest}.safetensors"


def _model_key(cfg: RunConfig) -> str:
    from cmpo.train.trainers import model_fingerprint

    return model_fingerprint(cfg.model.name)


def _with_reference(cfg, policy, args, ds, collator, split_name):
    from cmpo.train.trainers import precompute_reference

    if ds is None or not cfg.reference.precompute:
        return ds
    cache = _reference_cache_file(cfg, ds, split_name)
    with args.main_process_first(desc=f"reference log-probs ({split_name})"):
        return precompute_reference(policy, ds, collator, cache, cfg.reference.batch_size, device=args.device)


# ---------------------------------------------------------------------- SFT


def run_sft(cfg: RunConfig, data: str | Path, out: str | Path, resume=None, callbacks=None) -> RunResult:
    """Supervised fine-tuning on ``sft`` rows; keeps the checkpoint with the lowest validation loss."""
    from cmpo.models.loading import load_model
    from cmpo.train.data import SFTCollator, load_split, tokenize_sft
    from cmpo.train.trainers import PolicyModel, SFTTrainer

    out = Path(out)
    dd, meta = load_split(data, "sft")
    model, tok = load_model(cfg.model.name, dtype=_dtype(cfg.model.dtype),
                            trust_remote_code=cfg.model.trust_remote_code)
    template = _template(cfg, tok, meta)
    if cfg.data.train_split not in dd:
        raise ValueError(f"{data}/sft has no split {cfg.data.train_split!r} (has {list(dd)})")
    train_ds = tokenize_sft(_limit(dd[cfg.data.train_split], cfg.data.max_train_samples), template,
                            cfg.data.max_length, cfg.data.max_prompt_length, f"{data}/sft/{cfg.data.train_split}")
    eval_ds = _eval_split(dd, cfg)
    if eval_ds is not None:
        eval_ds = tokenize_sft(eval_ds, template, cfg.data.max_length, cfg.data.max_prompt_length,
                               f"{data}/sft/{cfg.data.eval_split}")
    model = _lora(model, cfg)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    best = {}
    if eval_ds is not None:  # thesis: keep the checkpoint with the lowest validation loss
        strategy = cfg.train.eval_strategy if cfg.train.eval_strategy != "no" else "epoch"
        best = dict(eval_strategy=strategy, save_strategy=strategy, load_best_model_at_end=True,
                    metric_for_best_model="eval_loss", greater_is_better=False)
        if strategy == "steps":
            best["save_steps"] = cfg.train.eval_steps or cfg.train.save_steps
    args = _training_args(cfg, out, **best)
    _write_run_info(args.output_dir, cfg, args.should_save)
    trainer = SFTTrainer(model=PolicyModel(model, cfg.train.logprob_chunk_size), args=args,
                         train_dataset=train_ds, eval_dataset=eval_ds, data_collator=SFTCollator(tok.pad_token_id), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=_resume_arg(resume, args.output_dir))
    if args.should_save:
        save_hf_model(model, tok, out, {"kind": "sft", "template": template.spec, "base_model": cfg.model.name})
    trainer.accelerator.wait_for_everyone()
    return RunResult(out, trainer.state.log_history, trainer)


# ---------------------------------------------------------------------- DPO


def run_dpo(cfg: RunConfig, data: str | Path, out: str | Path, resume=None, callbacks=None) -> RunResult:
    """cDPO on the ``pairs`` of one attribute (``cfg.attribute``); reference = the input (SFT) model."""
    import copy

    from cmpo.models.loading import load_model
    from cmpo.train.data import PairCollator, load_split, tokenize_pairs
    from cmpo.train.trainers import PolicyModel, PreferenceTrainer

    out = Path(out)
    attr = cfg.attribute
    dd, meta = load_split(data, "pairs")
    if not attr:
        raise ValueError("dpo needs an attribute (--attribute A or attribute: A in the recipe)")
    known = meta.get("attributes") or []
    if known and attr not in known:
        raise ValueError(f"attribute {attr!r} not in the prepared data's attributes {known}")
    model, tok = load_model(cfg.model.name, dtype=_dtype(cfg.model.dtype),
                            trust_remote_code=cfg.model.trust_remote_code)
    template = _template(cfg, tok, meta)

    def prepare(split):
        ds = dd[split].filter(lambda a: a == attr, input_columns="attribute", desc=f"attribute={attr}")
        if len(ds) == 0:
            raise ValueError(f"{data}/pairs/{split}: no pairs for attribute {attr!r}")
        return ds

    train_ds = tokenize_pairs(_limit(prepare(cfg.data.train_split), cfg.data.max_train_samples), template,
                              cfg.data.max_length, cfg.data.max_prompt_length, f"{data}/pairs/{cfg.data.train_split}")
    eval_ds = None
    if cfg.data.eval_split and cfg.data.eval_split in dd and cfg.train.eval_strategy != "no":
        eval_ds = tokenize_pairs(_limit(prepare(cfg.data.eval_split), cfg.data.max_eval_samples), template,
                                 cfg.data.max_length, cfg.data.max_prompt_length, f"{data}/pairs/{cfg.data.eval_split}")
    ref_model = None
    if cfg.model.full_finetune and not cfg.reference.precompute:
        ref_model = copy.deepcopy(model)
    model = _lora(model, cfg)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = PolicyModel(model, cfg.train.logprob_chunk_size, ref_model=ref_model)
    args = _training_args(cfg, out)
    _write_run_info(args.output_dir, cfg, args.should_save)
    collator = PairCollator(tok.pad_token_id)
    policy.to(args.device)
    train_ds = _with_reference(cfg, policy, args, train_ds, collator, "train")
    eval_ds = _with_reference(cfg, policy, args, eval_ds, collator, "eval")
    trainer = PreferenceTrainer(model=policy, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                data_collator=collator, beta=cfg.loss.beta, epsilon=cfg.loss.epsilon,
                                loss_type=cfg.loss.loss_type, chosen_nll_weight=cfg.loss.chosen_nll_weight,
                                chosen_unlikelihood_weight=cfg.loss.chosen_unlikelihood_weight,
                                callbacks=callbacks)
    trainer.train(resume_from_checkpoint=_resume_arg(resume, args.output_dir))
    if args.should_save:
        save_hf_model(model, tok, out, {"kind": "dpo", "template": template.spec, "base_model": cfg.model.name,
                                        "attribute": attr})
    trainer.accelerator.wait_for_everyone()
    return RunResult(out, trainer.state.log_history, trainer)


# ---------------------------------------------------------------------- CMPO


def build_plural(cfg: RunConfig, attributes: list[str], template_spec: str | None = None):
    from cmpo.models.plural import PluralConfig, PluralLM

    m = cfg.model
    pc = PluralConfig(attributes=list(attributes), head_mode=m.head_mode, head_rank=m.head_rank,
                      head_alpha=m.head_alpha, adapter=m.adapter, adapter_rank=m.lora_rank,
                      adapter_alpha=m.lora_alpha, adapter_dropout=m.lora_dropout,
                      adapter_targets=list(m.lora_targets), adapter_layers=m.adapter_layers,
                      full_finetune=m.full_finetune,
                      base_model=m.name, template=template_spec or "chat", init_seed=m.init_seed)
    return PluralLM.from_base(m.name, pc, dtype=_dtype(m.dtype), trust_remote_code=m.trust_remote_code)


def warm_start_dataset(sft_ds, attributes: list[str], top_fraction: float, source: str = "sft",
                       off_target_penalty: float = 0.0):
    """Plural SFT warm start data: for each attribute j, the top ``top_fraction`` of responses rated on j,
    ranked by r_j − ρ·Σ_{i≠j} r_i (ρ = ``off_target_penalty``; missing ratings count 0; ties: row order),
    with one-hot λ = e_j in ``weights``."""
    from datasets import concatenate_datasets

    if "ratings" not in sft_ds.column_names:
        raise ValueError(f"{source}: warm start needs the 'ratings' field")
    ratings = []
    for i, raw in enumerate(sft_ds["ratings"]):
        try:
            r = json.loads(raw) if isinstance(raw, str) else (raw or {})
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} row {i}: field 'ratings' is not JSON ({e})") from None
        ratings.append(r)
    parts = []
    for j, attr in enumerate(attributes):
        others = [a for a in attributes if a != attr]
        rated = [(float(r[attr]) - off_target_penalty * sum(float(r.get(a) or 0.0) for a in others), i)
                 for i, r in enumerate(ratings) if r.get(attr) is not None]
        if not rated:
            raise ValueError(f"{source}: no row has a rating for attribute {attr!r}")
        rated.sort(key=lambda x: (-x[0], x[1]))
        top = [i for _, i in rated[: max(1, int(round(top_fraction * len(rated))))]]
        onehot = [1.0 if jj == j else 0.0 for jj in range(len(attributes))]
        parts.append(sft_ds.select(top).add_column("weights", [onehot] * len(top)))
    return concatenate_datasets(parts)


def run_cmpo(cfg: RunConfig, data: str | Path, out: str | Path, resume=None, callbacks=None) -> RunResult:
    """CMPO: the plural model on λ-conditioned pairs (optionally after a plural SFT warm start)."""
    from cmpo.train.data import PairCollator, SFTCollator, load_split, tokenize_pairs, tokenize_sft
    from cmpo.train.trainers import PolicyModel, PreferenceTrainer, SFTTrainer

    out = Path(out)
    dd, meta = load_split(data, "conditioned")
    attributes = list(meta.get("attributes") or [])
    if cfg.attributes and list(cfg.attributes) != attributes:
        raise ValueError(f"attributes {cfg.attributes} differ from the prepared data's {attributes} "
                         "(λ index order comes from the data)")
    if not attributes:
        raise ValueError(f"{data}/meta.json lists no attributes")
    extra_prompts = _check_negatives(cfg)
    plural = build_plural(cfg, attributes, cfg.model.template or meta.get("template"))
    if not cfg.model.train_heads:
        if cfg.model.adapter == "none":
            raise ValueError("model.train_heads=false with model.adapter=none leaves nothing to train")
        plural.head.requires_grad_(False)
    tok = plural.tokenizer
    template = _template(cfg, tok, meta)
    plural.config.template = template.spec
    k = len(attributes)

    def check_weights(ds, where):
        bad = [i for i, w in enumerate(ds["weights"]) if len(w) != k]
        if bad:
            raise ValueError(f"{where} row {bad[0]}: field 'weights' has {len(ds[bad[0]]['weights'])} "
                             f"entries, expected {k} ({attributes})")
        return ds

    split = cfg.data.train_split
    raw_train = check_weights(_limit(dd[split], cfg.data.max_train_samples), f"{data}/conditioned/{split}")
    train_ds = tokenize_pairs(raw_train, template, cfg.data.max_length, cfg.data.max_prompt_length,
                              f"{data}/conditioned/{split}")
    eval_ds = None
    if cfg.data.eval_split and cfg.data.eval_split in dd and cfg.train.eval_strategy != "no":
        eval_ds = tokenize_pairs(_limit(dd[cfg.data.eval_split], cfg.data.max_eval_samples), template,
                                 cfg.data.max_length, cfg.data.max_prompt_length,
                                 f"{data}/conditioned/{cfg.data.eval_split}")
    if cfg.model.gradient_checkpointing:
        plural.gradient_checkpointing_enable()
    if cfg.model.prefix_cache:
        plural.enable_prefix_cache()
    policy = PolicyModel(plural, cfg.train.logprob_chunk_size)

    if cfg.warm_start.enabled:
        ws = cfg.warm_start
        sft_dd, _ = load_split(data, "sft")
        ws_ds = warm_start_dataset(sft_dd[split], attributes, ws.top_fraction, f"{data}/sft/{split}",
                                   ws.off_target_penalty)
        ws_ds = tokenize_sft(ws_ds, template, cfg.data.max_length, cfg.data.max_prompt_length, "warm start")
        ws_args = _training_args(cfg, out, output_dir=f"{cfg.train.output_dir or str(out) + '.checkpoints'}/warm_start",
                                 learning_rate=ws.learning_rate, num_train_epochs=ws.num_train_epochs,
                                 max_steps=ws.max_steps, eval_strategy="no")
        ws_trainer = SFTTrainer(model=policy, args=ws_args, train_dataset=ws_ds,
                                data_collator=SFTCollator(tok.pad_token_id, with_weights=True),
                                unlikelihood_weight=ws.unlikelihood_weight)
        ws_trainer.train(resume_from_checkpoint=_resume_arg(resume, ws_args.output_dir) if resume and
                         os.path.isdir(ws_args.output_dir) and any(Path(ws_args.output_dir).glob("checkpoint-*"))
                         else None)

    args = _training_args(cfg, out)
    _write_run_info(args.output_dir, cfg, args.should_save)
    collator = PairCollator(tok.pad_token_id, with_weights=True)
    policy.to(args.device)
    train_ds = _with_reference(cfg, policy, args, train_ds, collator, "train")
    eval_ds = _with_reference(cfg, policy, args, eval_ds, collator, "eval")
    trainer = PreferenceTrainer(model=policy, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                data_collator=collator, beta=cfg.loss.beta, epsilon=cfg.loss.epsilon,
                                loss_type=cfg.loss.loss_type, chosen_nll_weight=cfg.loss.chosen_nll_weight,
                                chosen_unlikelihood_weight=cfg.loss.chosen_unlikelihood_weight,
                                attributes=attributes,
                                callbacks=callbacks)
    trainer.train(resume_from_checkpoint=_resume_arg(resume, args.output_dir))
    history = list(trainer.state.log_history)
    rounds = []
    for r in range(cfg.negatives.rounds):
        round_trainer, found = _negatives_round(cfg, plural, policy, template, raw_train, extra_prompts,
                                                attributes, out, r, callbacks)
        rounds.append(found.counts)
        if round_trainer is not None:
            trainer = round_trainer
            history += [{**h, "negatives_round": r + 1} for h in trainer.state.log_history]
    plural.disable_prefix_cache()
    if args.should_save:
        plural.save(out)
    trainer.accelerator.wait_for_everyone()
    return RunResult(out, history, trainer, negatives=rounds)


def _check_negatives(cfg: RunConfig) -> list:
    """Validate ``negatives`` before any training; -> the extra prompts it names."""
    from cmpo.train.negatives import CHOSEN_SELECT, read_prompts

    neg = cfg.negatives
    if neg.rounds < 0:
        raise ValueError(f"negatives.rounds must be >= 0, got {neg.rounds}")
    if not neg.rounds:
        return []
    sample_bs = neg.batch_size if neg.sample_batch_size is None else neg.sample_batch_size
    if min(neg.max_steps, neg.max_new_tokens, neg.batch_size, sample_bs) < 1:
        raise ValueError("negatives.max_steps, max_new_tokens, batch_size and sample_batch_size must be >= 1, got "
                         f"{neg.max_steps}, {neg.max_new_tokens}, {neg.batch_size}, {neg.sample_batch_size}")
    if neg.replay < 0:
        raise ValueError(f"negatives.replay must be >= 0, got {neg.replay}")
    if neg.chosen_select not in CHOSEN_SELECT:
        raise ValueError(f"negatives.chosen_select must be one of {CHOSEN_SELECT}, got {neg.chosen_select!r}")
    return read_prompts(neg.prompts) if neg.prompts else []


def _negatives_round(cfg: RunConfig, plural, policy, template, raw_train, extra, attributes, out: Path, r: int,
                     callbacks):
    """One round of on-policy negatives (cmpo.train.negatives) -> (the round's trainer or None, what it found)."""
    from datasets import Dataset

    from cmpo.io import write_jsonl
    from cmpo.serve.generate import SteerableModel
    from cmpo.train.data import PairCollator, tokenize_pairs
    from cmpo.train.negatives import PAIR_FIELDS, find_negatives, with_replay
    from cmpo.train.trainers import PreferenceTrainer

    neg = cfg.negatives
    plural.disable_prefix_cache()  # generation runs the whole trunk with a KV cache
    was_training = plural.training
    plural.eval()
    steerable = SteerableModel("plural", plural, plural.tokenizer, template, attributes)
    found = find_negatives(steerable, raw_train, attributes, extra, neg.max_new_tokens, neg.batch_size,
                           neg.samples, neg.temperature, seed=cfg.train.seed + r, progress=True,
                           sample_batch_size=neg.sample_batch_size, reject_samples=neg.reject_samples,
                           chosen_select=neg.chosen_select)
    plural.train(was_training)
    log.info("negatives round %d: degenerate / generated per attribute: %s", r + 1, found.summary())
    if cfg.model.prefix_cache:
        plural.enable_prefix_cache()
    if not found.pairs:
        return None, found
    rows = with_replay(found.pairs, raw_train, neg.replay, cfg.train.seed + r)
    ds = tokenize_pairs(Dataset.from_list([{f: row[f] for f in PAIR_FIELDS} for row in rows]), template,
                        cfg.data.max_length, cfg.data.max_prompt_length, f"negatives round {r + 1}")
    base = cfg.train.output_dir or f"{out}.checkpoints"
    args = _training_args(cfg, out, output_dir=f"{base}/negatives-{r + 1}", max_steps=neg.max_steps,
                          learning_rate=neg.learning_rate or cfg.train.learning_rate, eval_strategy="no",
                          save_strategy="no")
    if args.should_save:  # the pairs the round trains against, for inspection
        write_jsonl(found.pairs, Path(args.output_dir) / "negatives.jsonl")
    collator = PairCollator(plural.tokenizer.pad_token_id, with_weights=True)
    ds = _with_reference(cfg, policy, args, ds, collator, f"negatives-{r + 1}")
    trainer = PreferenceTrainer(model=policy, args=args, train_dataset=ds, data_collator=collator,
                                beta=cfg.loss.beta, epsilon=cfg.loss.epsilon, loss_type=cfg.loss.loss_type,
                                chosen_nll_weight=cfg.loss.chosen_nll_weight,
                                chosen_unlikelihood_weight=cfg.loss.chosen_unlikelihood_weight,
                                attributes=attributes, callbacks=callbacks)
    trainer.train()
    return trainer, found
