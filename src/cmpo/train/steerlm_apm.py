"""SteerLM attribute prediction model (APM): a causal LM trunk + one head per attribute.

Input (thesis App. Table A.1, "Steer APM"): ``template.render_prompt(prompt) + template.response_text(response)``.
The trunk's hidden state at the last non-pad token, h ∈ R^d, feeds the heads:

  classification (thesis §5.3.1):  logits_j = W_j h + b_j ∈ R^5,  loss = CE(logits_j, round(v_j))
  regression (original SteerLM):   v̂_j = w_j·h + b_j ∈ R,          loss = (v̂_j − v_j)²

averaged over the (row, attribute) labels present (missing ratings are ignored). Ratings are 0–4 Likert values;
a fractional rating v is the class ``round(v)`` (half to even) for the classification loss and accuracy.

Trunk: LoRA via peft (merged when saved), ``frozen`` (only the heads train; pooled features are computed once and
cached, so training is a logistic regression on them), or ``full``. Saved directory: ``cmpo_model.json``
(kind ``steerlm-apm``), ``apm_head.safetensors``, the tokenizer, ``apm_metrics.json`` and, unless the trunk was
frozen, the merged trunk as a ``save_pretrained`` safetensors dir (a frozen trunk is reloaded from ``base_model``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cmpo.train.config import DataConfig, ModelConfig, TrainConfig

log = logging.getLogger(__name__)

MODEL_META = "cmpo_model.json"
HEAD_FILE = "apm_head.safetensors"
METRICS_FILE = "apm_metrics.json"
OBJECTIVES = ("classification", "regression")
TRUNKS = ("lora", "frozen", "full")


# ---------------------------------------------------------------------- configuration


@dataclass
class APMConfig:
    objective: str = "classification"  # classification (thesis) | regression (original SteerLM, MSE)
    trunk: str = "lora"  # lora | frozen (heads only, cached features) | full
    num_classes: int = 5  # Likert 0..4
    pooling: str = "last"  # last non-pad token | mean over tokens
    attributes: list[str] | None = None  # default: every attribute in the prepared data's meta.json
    feature_batch_size: int = 8  # frozen trunk: batch size for computing the cached features


@dataclass
class APMRunConfig:
    kind: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    apm: APMConfig = field(default_factory=APMConfig)

    @classmethod
    def load(cls, recipe: str | None, overrides: list[str] | None = None) -> APMRunConfig:
        from cmpo.recipes import apply_overrides, build, load_recipe

        values = apply_overrides(load_recipe(recipe), overrides or [])
        cfg = build(cls, values, where=str(recipe) if recipe else "recipe")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        a = self.apm
        if a.objective not in OBJECTIVES:
            raise ValueError(f"apm.objective must be one of {OBJECTIVES}, got {a.objective!r}")
        if a.trunk not in TRUNKS:
            raise ValueError(f"apm.trunk must be one of {TRUNKS}, got {a.trunk!r}")
        if a.pooling not in ("last", "mean"):
            raise ValueError(f"apm.pooling must be 'last' or 'mean', got {a.pooling!r}")
        if a.num_classes < 2:
            raise ValueError(f"apm.num_classes must be >= 2, got {a.num_classes}")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- model


def _unwrap_peft(model):
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


class AttributePredictor(nn.Module):
    """``forward(input_ids [B, T], attention_mask [B, T])`` or ``forward(features=[B, d])`` -> logits
    [B, k, C] (classification) or scores [B, k] (regression). The head is kept in fp32."""

    def __init__(self, lm: nn.Module, attributes: list[str], objective: str = "classification",
                 num_classes: int = 5, pooling: str = "last"):
        super().__init__()
        self.lm = lm
        self.attributes = list(attributes)
        self.objective, self.num_classes, self.pooling = objective, num_classes, pooling
        k = len(self.attributes)
        d = _unwrap_peft(lm).config.hidden_size
        self.head = nn.Linear(d, k * num_classes if objective == "classification" else k, dtype=torch.float32)

    @property
    def k(self) -> int:
        return len(self.attributes)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden state of the last attended token (any padding side), or the masked mean -> [B, d] fp32."""
        hf = _unwrap_peft(self.lm)
        trunk = getattr(hf, hf.base_model_prefix)
        out = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        h = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]).float()
        mask = attention_mask.to(h.dtype)
        if self.pooling == "mean":
            return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        last = (attention_mask.long().cumsum(1)).argmax(1)  # first index of the max = the last attended token
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, input_ids=None, attention_mask=None, features=None) -> torch.Tensor:
        if features is None:
            features = self.pool(input_ids, attention_mask)
        out = self.head(features.float())
        if self.objective == "classification":
            return out.view(-1, self.k, self.num_classes)
        return out

    def distribution(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head output -> (class probabilities [B, k, C], expected scores [B, k]).

        Classification: softmax and E[c] = Σ_c c·p_c. Regression: the score itself, and a one-hot distribution at
        its rounded, clipped class (the regression head has no distribution).
        """
        classes = torch.arange(self.num_classes, dtype=torch.float32, device=out.device)
        if self.objective == "classification":
            probs = out.float().softmax(-1)
            return probs, probs @ classes
        scores = out.float()
        cls = scores.clamp(0, self.num_classes - 1).round().long()
        return F.one_hot(cls, self.num_classes).float(), scores


def apm_loss(out: torch.Tensor, labels: torch.Tensor, objective: str, num_classes: int) -> torch.Tensor:
    """Mean over present labels (``labels`` [B, k], NaN = missing) of CE(out [B, k, C], round(v)) or (v̂ − v)²."""
    present = ~torch.isnan(labels)
    if not present.any():
        return out.sum() * 0.0  # keeps the graph (and DDP) happy on a batch without labels
    if objective == "classification":
        target = labels[present].clamp(0, num_classes - 1).round().long()
        return F.cross_entropy(out[present].float(), target)
    return F.mse_loss(out[present].float(), labels[present].float())


# ---------------------------------------------------------------------- data


def parse_ratings(raw, attributes: list[str], num_classes: int, where: str) -> list[float]:
    """A row's ``ratings`` (JSON string or dict, {attribute: 0..C-1 or null}) -> [k] floats, NaN = missing."""
    try:
        r = json.loads(raw) if isinstance(raw, str) else (raw or {})
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: field 'ratings' is not JSON ({e})") from None
    if not isinstance(r, dict):
        raise ValueError(f"{where}: field 'ratings' must be a JSON object, got {type(r).__name__}")  # noqa: TRY004
    out = []
    for a in attributes:
        v = r.get(a)
        if v is None:
            out.append(math.nan)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v <= num_classes - 1):
            raise ValueError(f"{where}: field 'ratings' value for {a!r} must be a number in "
                             f"[0, {num_classes - 1}], got {v!r}")
        out.append(float(v))
    return out


def _truncate(p: list[int], r: list[int], max_prompt: int, max_len: int) -> list[int]:
    """Keep the prompt's end (≤ max_prompt tokens) and the response's start (total ≤ max_len)."""
    p = p[-max_prompt:] if max_prompt else p
    return p + r[: max(0, max_len - len(p))]


def encode_example(template, prompt, response: str, max_length: int, max_prompt_length: int) -> list[int]:
    """The APM input tokens: render_prompt(prompt) + response_text(response), truncated."""
    p, r = template.encode(prompt, response)
    return _truncate(p, r, max_prompt_length, max_length)


def tokenize_apm(ds, template, attributes, num_classes, max_length, max_prompt_length, source: str):
    """Add ``input_ids`` and ``labels`` [k] (NaN = missing) to an sft dataset."""
    for col in ("prompt", "response", "ratings"):
        if col not in ds.column_names:
            raise ValueError(f"{source}: missing field {col!r} (columns: {ds.column_names})")

    def encode(row, idx):
        where = f"{source} row {idx}"
        if not isinstance(row["prompt"], list) or not row["prompt"]:
            raise ValueError(f"{where}: field 'prompt' must be a non-empty list of messages")
        if not isinstance(row["response"], str) or not row["response"]:
            raise ValueError(f"{where}: field 'response' must be a non-empty string")
        return {"input_ids": encode_example(template, row["prompt"], row["response"], max_length,
                                            max_prompt_length),
                "labels": parse_ratings(row["ratings"], attributes, num_classes, where)}

    return ds.map(encode, with_indices=True, desc=f"tokenizing {source}")


class APMCollator:
    """Rows with ``input_ids`` (right-padded with ``pad_id``) or cached ``features``, plus optional ``labels``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        if "features" in rows[0]:
            batch["features"] = torch.tensor([r["features"] for r in rows], dtype=torch.float32)
        else:
            width = max(len(r["input_ids"]) for r in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            am = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"], dtype=torch.long)
                am[i, : len(r["input_ids"])] = 1
            batch["input_ids"], batch["attention_mask"] = ids, am
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([[math.nan if v is None else v for v in r["labels"]] for r in rows],
                                           dtype=torch.float32)
        return batch


def _length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); the caller restores the order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def pooled_features(model: AttributePredictor, ds, pad_id: int, batch_size: int = 8, device=None,
                    desc: str = "APM features") -> torch.Tensor:
    """Pooled trunk states for every row of a tokenized dataset -> [N, d] fp32 (dataset order)."""
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    collate = APMCollator(pad_id)
    was_training = model.training
    model.eval()
    ids = ds["input_ids"]
    out = torch.zeros(len(ids), model.head.in_features)
    for batch_idx in tqdm(_length_batches([len(x) for x in ids], batch_size), desc=desc, unit="batch"):
        b = collate([{"input_ids": ids[i]} for i in batch_idx])
        out[batch_idx] = model.pool(b["input_ids"].to(device), b["attention_mask"].to(device)).cpu()
    model.train(was_training)
    return out


# ---------------------------------------------------------------------- metrics


def apm_metrics(probs: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, train_labels: torch.Tensor,
                attributes: list[str]) -> dict:
    """Per attribute over present labels: accuracy of argmax class vs round(v), MAE of the expected score, and
    the majority-class baseline (the most frequent training class, ties -> the lower class)."""
    c = probs.shape[-1]
    pred = probs.argmax(-1)
    out = {}
    for j, a in enumerate(attributes):
        m = ~torch.isnan(labels[:, j])
        tm = ~torch.isnan(train_labels[:, j])
        entry: dict = {"n": int(m.sum())}
        if tm.any():
            counts = torch.bincount(train_labels[tm, j].clamp(0, c - 1).round().long(), minlength=c)
            entry["majority_class"] = int(counts.argmax())
        if m.any():
            v = labels[m, j]
            cls = v.clamp(0, c - 1).round().long()
            entry["accuracy"] = float((pred[m, j] == cls).float().mean())
            entry["mae"] = float((scores[m, j] - v).abs().mean())
            if "majority_class" in entry:
                maj = entry["majority_class"]
                entry["majority_accuracy"] = float((cls == maj).float().mean())
                entry["majority_mae"] = float((v - maj).abs().mean())
        out[a] = entry
    return out


# ---------------------------------------------------------------------- scorer API


class APMPrediction(NamedTuple):
    probs: torch.Tensor  # [N, k, C] class distributions (rows sum to 1)
    scores: torch.Tensor  # [N, k] expected (classification) or regressed (regression) scores


class APM:
    """A trained APM for scoring: ``APM.load(dir).predict(prompts, responses)``."""

    def __init__(self, model: AttributePredictor, tokenizer, template, meta: dict):
        self.model, self.tokenizer, self.template, self.meta = model, tokenizer, template, dict(meta)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def attributes(self) -> list[str]:
        return self.model.attributes

    @classmethod
    def load(cls, path: str | os.PathLike, dtype="float32", device=None) -> APM:
        from safetensors.torch import load_file

        from cmpo.data.templates import PromptTemplate
        from cmpo.models.loading import load_model, load_tokenizer

        path = Path(path)
        meta_file = path / MODEL_META
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file} not found: {path} is not a SteerLM APM directory")
        meta = json.loads(meta_file.read_text())
        if meta.get("kind") != "steerlm-apm":
            raise ValueError(f"{meta_file}: field 'kind' is {meta.get('kind')!r}, expected 'steerlm-apm'")
        for f in ("attributes", "objective", "num_classes", "base_model"):
            if f not in meta:
                raise ValueError(f"{meta_file}: missing field {f!r}")
        if device == "auto" or device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        trunk_src = str(path) if (path / "config.json").exists() else meta["base_model"]
        lm, _ = load_model(trunk_src, dtype=dtype, device=device)
        tok = load_tokenizer(str(path)) if (path / "tokenizer_config.json").exists() else load_tokenizer(trunk_src)
        model = AttributePredictor(lm, meta["attributes"], meta["objective"], meta["num_classes"],
                                   meta.get("pooling", "last"))
        sd = load_file(path / HEAD_FILE)
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in sd.items()})
        model.to(device).eval()
        template = PromptTemplate.resolve(meta.get("template"), tok)
        return cls(model, tok, template, meta)

    @torch.no_grad()
    def predict(self, prompts: list, responses: list[str], batch_size: int = 8,
                progress: bool = False) -> APMPrediction:
        """Score each (prompt, response) -> APMPrediction(probs [N, k, C], scores [N, k]) in input order."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n, k, c = len(prompts), self.model.k, self.model.num_classes
        probs, scores = torch.zeros(n, k, c), torch.zeros(n, k)
        if n == 0:
            return APMPrediction(probs, scores)
        max_len = int(self.meta.get("max_length", 1024))
        max_prompt = int(self.meta.get("max_prompt_length", 0))
        ids = [encode_example(self.template, p, r, max_len, max_prompt) for p, r in zip(prompts, responses)]
        batches = _length_batches([len(x) for x in ids], max(1, batch_size))
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="APM", unit="batch")
        collate, device = APMCollator(self.tokenizer.pad_token_id), next(self.model.parameters()).device
        self.model.eval()
        for idx in batches:
            b = collate([{"input_ids": ids[i]} for i in idx])
            out = self.model(b["input_ids"].to(device), b["attention_mask"].to(device))
            p, s = self.model.distribution(out)
            probs[idx], scores[idx] = p.cpu(), s.cpu()
        return APMPrediction(probs, scores)


# ---------------------------------------------------------------------- training


def _trainer_class():
    from cmpo.train.trainers import _CmpoTrainerBase  # trainable-only safetensors checkpoints, exact resume

    class APMTrainer(_CmpoTrainerBase):
        loss_is_scaled_for_ga = False  # per-batch mean: the Trainer divides by the accumulation steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            out = model(**inputs)
            unwrapped = self.accelerator.unwrap_model(model)
            loss = apm_loss(out, labels, unwrapped.objective, unwrapped.num_classes)
            return (loss, {"loss": loss, "logits": out}) if return_outputs else loss

    return APMTrainer


def _labels_tensor(ds) -> torch.Tensor:
    return torch.tensor([[math.nan if v is None else v for v in row] for row in ds["labels"]], dtype=torch.float32)


@torch.no_grad()
def _evaluate(model: AttributePredictor, ds, pad_id: int, batch_size: int, device) -> tuple[torch.Tensor, ...]:
    collate = APMCollator(pad_id)
    model.eval()
    probs, scores = [], []
    for start in range(0, len(ds), batch_size):
        rows = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
        b = {k: v.to(device) for k, v in collate(rows).items() if k != "labels"}
        p, s = model.distribution(model(**b))
        probs.append(p.cpu())
        scores.append(s.cpu())
    return torch.cat(probs), torch.cat(scores)


def _write_dir_atomic(out: Path, write) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def train_apm(cfg: APMRunConfig, data: str | os.PathLike, out: str | os.PathLike, resume=None) -> Path:
    """Train an APM on the ``sft`` split's ratings; write the APM dir (see module doc) and return its path."""
    from safetensors.torch import save_file

    from cmpo.data.templates import PromptTemplate
    from cmpo.models.loading import load_model
    from cmpo.train.data import load_split
    from cmpo.train.runs import _lora, _resume_arg, _training_args

    cfg.validate()
    out = Path(out)
    a, m, d = cfg.apm, cfg.model, cfg.data
    dd, meta = load_split(data, "sft")
    attributes = list(a.attributes or meta.get("attributes") or [])
    if not attributes:
        raise ValueError(f"{data}/meta.json lists no attributes and apm.attributes is not set")
    if d.train_split not in dd:
        raise ValueError(f"{data}/sft has no split {d.train_split!r} (has {list(dd)})")
    lm, tok = load_model(m.name, dtype=getattr(torch, m.dtype), trust_remote_code=m.trust_remote_code)
    template = PromptTemplate.resolve(m.template or meta.get("template"), tok)

    def prep(split, limit):
        ds = dd[split]
        ds = ds.select(range(min(limit, len(ds)))) if limit is not None else ds
        return tokenize_apm(ds, template, attributes, a.num_classes, d.max_length, d.max_prompt_length,
                            f"{data}/sft/{split}")

    train_ds = prep(d.train_split, d.max_train_samples)
    eval_ds = prep(d.eval_split, d.max_eval_samples) if d.eval_split and d.eval_split in dd and \
        len(dd[d.eval_split]) > 0 else None
    train_labels = _labels_tensor(train_ds)
    for j, attr in enumerate(attributes):
        if torch.isnan(train_labels[:, j]).all():
            raise ValueError(f"{data}/sft/{d.train_split}: no row has a rating for attribute {attr!r}")

    if a.trunk == "lora":
        lm = _lora(lm, cfg)
    else:
        lm.requires_grad_(a.trunk == "full")
    if m.gradient_checkpointing and a.trunk != "frozen":
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(m.init_seed)
    model = AttributePredictor(lm, attributes, a.objective, a.num_classes, a.pooling)

    best = {}
    if eval_ds is not None:  # thesis: keep the checkpoint with the lowest validation loss
        strategy = cfg.train.eval_strategy if cfg.train.eval_strategy != "no" else "epoch"
        best = {"eval_strategy": strategy, "save_strategy": strategy, "load_best_model_at_end": True,
                "metric_for_best_model": "eval_loss", "greater_is_better": False}
        if strategy == "steps":
            best["save_steps"] = cfg.train.eval_steps or cfg.train.save_steps
    args = _training_args(cfg, out, **best)
    model.to(args.device)
    if a.trunk == "frozen":  # heads only: the trunk's pooled states never change, compute them once
        train_ds = train_ds.add_column("features", pooled_features(
            model, train_ds, tok.pad_token_id, a.feature_batch_size, args.device, "APM features (train)").tolist())
        if eval_ds is not None:
            eval_ds = eval_ds.add_column("features", pooled_features(
                model, eval_ds, tok.pad_token_id, a.feature_batch_size, args.device, "APM features (eval)").tolist())
    if args.should_save:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "cmpo_run.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               data_collator=APMCollator(tok.pad_token_id))
    trainer.train(resume_from_checkpoint=_resume_arg(resume, args.output_dir))

    metrics = {"attributes": attributes, "objective": a.objective, "trunk": a.trunk}
    if eval_ds is not None:
        probs, scores = _evaluate(model, eval_ds, tok.pad_token_id, cfg.train.per_device_eval_batch_size,
                                  args.device)
        metrics["validation"] = apm_metrics(probs, scores, _labels_tensor(eval_ds), train_labels, attributes)
    log.info("APM metrics: %s", json.dumps(metrics))
    if not args.should_save:
        return out
    info = {"kind": "steerlm-apm", "attributes": attributes, "objective": a.objective,
            "num_classes": a.num_classes, "pooling": a.pooling, "template": template.spec,
            "base_model": m.name, "trunk": a.trunk, "max_length": d.max_length,
            "max_prompt_length": d.max_prompt_length}

    def write(tmp: Path) -> None:
        if a.trunk != "frozen":
            trunk = model.lm.merge_and_unload() if hasattr(model.lm, "merge_and_unload") else model.lm
            trunk.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()},
                  str(tmp / HEAD_FILE), metadata={"format": "pt"})
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (tmp / MODEL_META).write_text(json.dumps(info, indent=2))

    _write_dir_atomic(out, write)
    trainer.accelerator.wait_for_everyone()
    return out
