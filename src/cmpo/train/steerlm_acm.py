"""SteerLM attribute-conditioned model (ACM): SFT on (prompt, attribute string, response).

    text = template.render_prompt(prompt, attributes=prefix + "helpfulness:4,humor:0") + response_text(response)
    L_ACM = −Σ log π(y | x, v)           (thesis eq. 2.13; loss on the response tokens only)

The attribute string follows the Assistant turn (thesis App. Table A.1, "Steer ACM"); ``acm.attribute_prefix:
"<extra_id_2>"`` gives NeMo's label convention. Values are each row's ``ratings`` rounded to integer Likert classes
(``cmpo steerlm relabel`` makes them complete). Training reuses cmpo's SFT trainer (response-only NLL, LoRA
merged at the end, best checkpoint by validation loss). The output is a plain HF dir + ``cmpo_model.json``
``{"kind": "steerlm-acm", "attributes", "attribute_prefix", "template", "base_model"}``, which
``SteerableModel.load`` / ``cmpo generate --method steerlm --attributes humor=4`` understand.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cmpo.train.config import DataConfig, ModelConfig, TrainConfig
from cmpo.train.steerlm import format_attributes


@dataclass
class ACMConfig:
    attribute_prefix: str = ""  # "<extra_id_2>" for NeMo's convention
    attributes: list[str] | None = None  # default: the prepared (relabelled) data's meta.json attributes
    missing: str = "error"  # a row without a rating for some attribute: error | drop
    round_values: bool = True  # condition on integer Likert classes (as the APM relabels them)


@dataclass
class ACMRunConfig:
    kind: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    acm: ACMConfig = field(default_factory=ACMConfig)

    @classmethod
    def load(cls, recipe: str | None, overrides: list[str] | None = None) -> ACMRunConfig:
        from cmpo.recipes import apply_overrides, build, load_recipe

        values = apply_overrides(load_recipe(recipe), overrides or [])
        cfg = build(cls, values, where=str(recipe) if recipe else "recipe")
        if cfg.acm.missing not in ("error", "drop"):
            raise ValueError(f"acm.missing must be 'error' or 'drop', got {cfg.acm.missing!r}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def attribute_string(raw_ratings, attributes: list[str], round_values: bool, where: str) -> str | None:
    """A row's ``ratings`` JSON -> its attribute string (no prefix), or None if an attribute is missing."""
    try:
        r = json.loads(raw_ratings) if isinstance(raw_ratings, str) else (raw_ratings or {})
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: field 'ratings' is not JSON ({e})") from None
    if not isinstance(r, dict):
        raise ValueError(f"{where}: field 'ratings' must be a JSON object")  # noqa: TRY004 - bad data
    values = {}
    for a in attributes:
        v = r.get(a)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{where}: field 'ratings' value for {a!r} must be a number, got {v!r}")  # noqa: TRY004
        values[a] = round(v) if round_values else v
    return format_attributes(values, attributes, default=None)


def tokenize_acm(ds, template, attributes, acm: ACMConfig, max_length: int, max_prompt_length: int, source: str):
    """Add ``prompt_ids`` (with the attribute string), ``response_ids`` and ``attributes`` (the string)."""
    for col in ("prompt", "response", "ratings"):
        if col not in ds.column_names:
            raise ValueError(f"{source}: missing field {col!r} (columns: {ds.column_names})")
    strings = [attribute_string(r, attributes, acm.round_values, f"{source} row {i}")
               for i, r in enumerate(ds["ratings"])]
    missing = [i for i, s in enumerate(strings) if s is None]
    if missing and acm.missing == "error":
        i = missing[0]
        raise ValueError(f"{source} row {i}: field 'ratings' lacks some of {attributes} ({ds[i]['ratings']}); "
                         f"{len(missing)} rows are incomplete: run `cmpo steerlm relabel` first or set "
                         f"acm.missing=drop")
    keep = [i for i, s in enumerate(strings) if s is not None]
    ds = ds.add_column("attributes", strings)
    if missing:
        ds = ds.select(keep)
    if len(ds) == 0:
        raise ValueError(f"{source}: no row has ratings for all of {attributes}")

    def encode(row, idx):
        if not isinstance(row["prompt"], list) or not row["prompt"] or row["prompt"][-1].get("role") != "user":
            raise ValueError(f"{source} row {idx}: field 'prompt' must be a list of messages ending with a user turn")
        if not isinstance(row["response"], str) or not row["response"]:
            raise ValueError(f"{source} row {idx}: field 'response' must be a non-empty string")
        p, r = template.encode(row["prompt"], row["response"], attributes=row["attributes"],
                               finished=row.get("finished", True))
        p = p[-max_prompt_length:] if max_prompt_length else p
        return {"prompt_ids": p, "response_ids": r[: max(0, max_length - len(p))]}

    return ds.map(encode, with_indices=True, desc=f"tokenizing {source}")


def train_acm(cfg: ACMRunConfig, data: str | os.PathLike, out: str | os.PathLike, resume=None) -> Path:
    """SFT the ACM on ``data/sft``; write a ``steerlm-acm`` model dir and return its path."""
    from cmpo.data.templates import PromptTemplate
    from cmpo.models.loading import load_model
    from cmpo.train.data import SFTCollator, load_split
    from cmpo.train.runs import _lora, _resume_arg, _training_args, save_hf_model
    from cmpo.train.trainers import PolicyModel, SFTTrainer

    out = Path(out)
    m, d = cfg.model, cfg.data
    dd, meta = load_split(data, "sft")
    attributes = list(cfg.acm.attributes or meta.get("attributes") or [])
    if not attributes:
        raise ValueError(f"{data}/meta.json lists no attributes and acm.attributes is not set")
    if d.train_split not in dd:
        raise ValueError(f"{data}/sft has no split {d.train_split!r} (has {list(dd)})")
    model, tok = load_model(m.name, dtype=getattr(torch, m.dtype), trust_remote_code=m.trust_remote_code)
    template = PromptTemplate.resolve(m.template or meta.get("template"), tok)
    template.attribute_prefix = cfg.acm.attribute_prefix or ""

    def prep(split, limit):
        ds = dd[split]
        ds = ds.select(range(min(limit, len(ds)))) if limit is not None else ds
        return tokenize_acm(ds, template, attributes, cfg.acm, d.max_length, d.max_prompt_length,
                            f"{data}/sft/{split}")

    train_ds = prep(d.train_split, d.max_train_samples)
    eval_ds = prep(d.eval_split, d.max_eval_samples) if d.eval_split and d.eval_split in dd and \
        len(dd[d.eval_split]) > 0 else None
    model = _lora(model, cfg)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    best = {}
    if eval_ds is not None:  # thesis: keep the checkpoint with the lowest validation loss
        strategy = cfg.train.eval_strategy if cfg.train.eval_strategy != "no" else "epoch"
        best = {"eval_strategy": strategy, "save_strategy": strategy, "load_best_model_at_end": True,
                "metric_for_best_model": "eval_loss", "greater_is_better": False}
        if strategy == "steps":
            best["save_steps"] = cfg.train.eval_steps or cfg.train.save_steps
    args = _training_args(cfg, out, **best)
    if args.should_save:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "cmpo_run.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    trainer = SFTTrainer(model=PolicyModel(model, cfg.train.logprob_chunk_size), args=args,
                         train_dataset=train_ds, eval_dataset=eval_ds, data_collator=SFTCollator(tok.pad_token_id))
    trainer.train(resume_from_checkpoint=_resume_arg(resume, args.output_dir))
    if args.should_save:
        save_hf_model(model, tok, out, {"kind": "steerlm-acm", "attributes": attributes,
                                        "attribute_prefix": template.attribute_prefix, "template": template.spec,
                                        "base_model": m.name})
    trainer.accelerator.wait_for_everyone()
    return out
