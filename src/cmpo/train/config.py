"""Training run configuration: the sections of a recipe (``recipes/*.yaml``) as dataclasses.

A recipe has the sections ``model``, ``data``, ``loss``, ``train``, ``reference``, ``warm_start`` (and
``kind``/``attribute``); ``key=value`` overrides use dotted keys (``train.learning_rate=1e-4``).
Defaults are the thesis's (§5.2–5.3): LoRA on the attention projections, AdamW, constant LR 5e-6,
weight decay 1e-2, β = 0.5, ε = 0.1.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class _Coerce:
    """YAML reads ``5e-6`` (no dot) as a string: convert strings in float/int fields, with a clear error."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, tp = getattr(self, f.name), hints[f.name]
            allowed = set(typing.get_args(tp)) or {tp}
            if not isinstance(value, str) or str in allowed:
                continue
            for num in (int, float):
                if num in allowed:
                    try:
                        setattr(self, f.name, num(float(value)) if num is int else float(value))
                        break
                    except ValueError:
                        pass
            else:
                raise ValueError(f"{type(self).__name__}.{f.name}: {value!r} is not a {tp}")


@dataclass
class ModelConfig(_Coerce):
    name: str = "smollm2-135m"  # sft: the base model; dpo/cmpo: the SFT model (reference policy)
    dtype: str = "float32"
    template: str | None = None  # None: the prepared data's template, else the tokenizer's chat template
    trust_remote_code: bool = False
    full_finetune: bool = False  # False: LoRA (sft/dpo) or adapters+heads (cmpo) only
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # CMPO plural model (src/cmpo/models/plural.py)
    head_mode: str = "lowrank"  # full | lowrank
    head_rank: int = 16
    head_alpha: float = 16.0
    adapter: str = "shared"  # shared (thesis) | plural | none
    train_heads: bool = True  # False: every head stays W0 and the (plural) adapters alone steer
    adapter_layers: int | None = None  # adapters on the last N decoder layers only (None: all)
    prefix_cache: bool = False  # cache the frozen layers below the adapters once per sequence (CPU speed-up)
    init_seed: int = 0
    gradient_checkpointing: bool = False


@dataclass
class DataConfig(_Coerce):
    path: str | None = None  # a `cmpo prepare` output directory
    train_split: str = "train"
    eval_split: str | None = "validation"  # None or missing split: no evaluation
    max_length: int = 512
    max_prompt_length: int = 256
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


@dataclass
class LossConfig(_Coerce):
    beta: float = 0.5
    epsilon: float = 0.1  # cDPO label-flip rate; 0 = plain DPO
    loss_type: str = "sigmoid"  # sigmoid (DPO/cDPO) | ipo
    # α: add α · (per-token NLL of the chosen response under its λ) to each pair's loss (RPO, Pang et al. 2024;
    # TRL's rpo_alpha). Keeps the policy on fluent, likely text while the margin grows; 0 = the thesis.
    chosen_nll_weight: float = 0.0
    # γ: token-level unlikelihood of tokens the chosen response already used, per chosen token (Welleck et al.
    # 2019; see WarmStartConfig.unlikelihood_weight); 0 = off
    chosen_unlikelihood_weight: float = 0.0


@dataclass
class ReferenceConfig(_Coerce):
    precompute: bool = False  # score π_ref once before training (cached on disk), no reference forward per step
    cache_dir: str | None = None  # default: $CMPO_CACHE/reference
    batch_size: int = 8


@dataclass
class WarmStartConfig(_Coerce):
    """Plural SFT warm start (thesis §6.1): each head (+ its plural adapter) is first trained by SFT with
    one-hot λ on the responses rated highest for its attribute."""

    enabled: bool = False
    top_fraction: float = 0.25  # per attribute, the top share of SFT responses by that attribute's rating
    # rank by r_j − ρ·Σ_{i≠j} r_i instead of r_j: prefers responses that are high on j *only*, so a head does not
    # also learn what its attribute happens to co-occur with in the data (e.g. enthusiastic answers being short)
    off_target_penalty: float = 0.0
    # γ: token-level unlikelihood on tokens the response already used (Welleck et al. 2019), added to the
    # warm start's NLL, aimed at greedy loops such as `1.1.1.1…` (measured: docs/steerability.md). 0 = plain SFT.
    unlikelihood_weight: float = 0.0
    num_train_epochs: float = 1.0
    learning_rate: float = 1e-4
    max_steps: int = -1


@dataclass
class NegativesConfig(_Coerce):
    """Rounds of on-policy negatives after preference training (cmpo.train.negatives): greedy outputs under
    each one-hot λ that are degenerate (loops, non-prose) become rejected responses of new pairs."""

    rounds: int = 0  # 0 = off
    prompts: str | None = None  # JSONL of extra unlabelled prompts (field `prompt`) searched besides the training ones
    max_new_tokens: int = 64  # loops show within a few dozen tokens; longer costs generation time
    batch_size: int = 16  # greedy search rows per batch (λs mixed; larger is faster on CPU, same outputs)
    sample_batch_size: int | None = None  # rows per batch sampling chosens (None: batch_size); draws depend on it
    samples: int = 4  # sampled outputs per flagged unlabelled prompt; a non-degenerate one is the chosen
    chosen_select: str = "first"  # which one: "first", or "cleanest" (highest data.quality.prose_score)
    temperature: float = 0.8
    reject_samples: bool = False  # degenerate sampled outputs become rejected responses too (same chosen)
    replay: float = 1.0  # original pairs mixed into a round, per negative pair
    max_steps: int = 20  # optimizer steps per round (a fresh AdamW state each round)
    learning_rate: float | None = None  # None: train.learning_rate


@dataclass
class TrainConfig(_Coerce):
    """Forwarded to ``transformers.TrainingArguments`` (``extra`` takes any other of its arguments)."""

    output_dir: str | None = None  # checkpoints and logs; default: <out>.checkpoints
    learning_rate: float = 5e-6
    weight_decay: float = 0.01
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    logging_steps: int = 10
    eval_strategy: str = "no"  # no | steps | epoch  (sft forces a best-by-validation strategy when it can)
    eval_steps: int | None = None
    save_strategy: str = "steps"
    save_steps: int = 500
    save_total_limit: int | None = 2
    seed: int = 42
    bf16: bool = False
    fp16: bool = False
    report_to: str | list[str] = "none"  # tensorboard | wandb | none
    run_name: str | None = None
    dataloader_num_workers: int = 0
    logprob_chunk_size: int = 1024
    disable_tqdm: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    kind: str | None = None  # sft | dpo | cmpo (checked against the sub-command)
    attribute: str | None = None  # dpo: the attribute whose pairs are used
    attributes: list[str] | None = None  # cmpo: default = every attribute in the prepared data
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def load_run_config(recipe: str | None, overrides: list[str] | None = None) -> RunConfig:
    from cmpo.recipes import apply_overrides, build, load_recipe

    values = apply_overrides(load_recipe(recipe), overrides or [])
    return build(RunConfig, values, where=str(recipe) if recipe else "recipe")
