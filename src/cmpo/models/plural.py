"""The plural model (thesis §3.2.1, eq. 3.1): one transformer trunk, k language-modeling heads.

For attribute weights λ ∈ R^k the next-token distribution is

    p(y | x; λ) = softmax( Σ_j λ_j · h W_j )                       h: last hidden state [.., d], W_j: [V, d]

Head parameterisations (both start with every W_j equal to the base head W0, so for Σλ = 1 the plural
model is exactly the base model):

  ``full``     W_j is a full trainable copy of W0 (the thesis). Mixing costs k vocabulary matmuls.
  ``lowrank``  W_j = W0 + s·B_j A_j with W0 frozen, A_j: [r, d], B_j: [V, r] zero-initialised, s = α/r.
               Σ_j λ_j h W_j = (Σλ)·h W0 + s·Σ_j λ_j (h A_jᵀ) B_jᵀ — one vocabulary matmul plus a
               rank-(k·r) term, computed per example without materialising k logit tensors.

Trunk adapters (``adapter``):
  ``shared``   one peft LoRA on the attention projections, shared by all attributes (the thesis).
  ``plural``   per-attribute LoRA deltas mixed by the example's λ: ΔW(λ) = s·Σ_j λ_j B_j A_j, computed as
               ((x Aᵀ) ⊙ λ) Bᵀ with stacked A: [k·r, d_in], B: [d_out, k·r].
  ``none``     heads only.

The current weights live in a :class:`SteeringState` shared by the head and the plural adapters, so the
wrapped Hugging Face model keeps its own ``forward``/``generate`` (every generation option works, and a batch
may carry one weight vector per example). The reference policy π_ref — the model before it became plural —
is exact: :meth:`PluralLM.reference` switches every adapter off and uses W0 alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from cmpo.io import atomic_dir
from cmpo.models.layers import HeadMode, PluralHead, PluralLoRALinear, SteeringState
from cmpo.models.prefix_cache import FrozenPrefixCache, _decoder_layers
from cmpo.models.steering import SteeringError, resolve_weights

CONFIG_NAME = "cmpo_config.json"
WEIGHTS_NAME = "plural.safetensors"
BASE_DIR_NAME = "base"

AdapterMode = Literal["shared", "plural", "none"]


@dataclass
class PluralConfig:
    """Everything needed to rebuild a plural model on top of its base model."""

    attributes: list[str]
    head_mode: HeadMode = "lowrank"
    head_rank: int = 16
    head_alpha: float = 16.0
    adapter: AdapterMode = "shared"
    adapter_rank: int = 16
    adapter_alpha: float = 32.0
    adapter_dropout: float = 0.0
    adapter_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    adapter_layers: int | None = None  # adapters on the last N decoder layers only (None: all layers)
    full_finetune: bool = False
    base_model: str = "smollm2-135m"
    template: str = "chat"
    default_weights: dict[str, float] | None = None
    init_seed: int = 0

    def __post_init__(self):
        if not self.attributes:
            raise ValueError("a plural model needs at least one attribute")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"duplicate attribute names in {self.attributes}")
        if self.head_mode not in ("full", "lowrank"):
            raise ValueError(f"head_mode must be 'full' or 'lowrank', got {self.head_mode!r}")
        if self.adapter not in ("shared", "plural", "none"):
            raise ValueError(f"adapter must be 'shared', 'plural' or 'none', got {self.adapter!r}")

    @property
    def k(self) -> int:
        return len(self.attributes)

    @classmethod
    def from_dict(cls, d: dict) -> PluralConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _get_lm_head(model) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head)")
    return head


def _set_lm_head(model, module: nn.Module) -> None:
    model.set_output_embeddings(module)


class PluralLM(nn.Module):
    """A Hugging Face causal LM whose LM head is a :class:`PluralHead` (and optionally plural adapters).

    ``model(input_ids, attention_mask, weights=λ)`` returns the HF output with λ-mixed logits.
    ``self.model`` is the wrapped HF model: call ``generate`` on it inside ``with plural.steer(λ):``.
    """

    def __init__(self, model, config: PluralConfig, tokenizer=None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.state = SteeringState()
        self._peft = None
        head = _get_lm_head(model)
        if getattr(head, "bias", None) is not None:
            raise NotImplementedError("LM heads with a bias are not supported")
        # The base head may be tied to the input embeddings (SmolLM2): the plural heads are untied copies.
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False
        if config.full_finetune:
            model.requires_grad_(True)
        else:
            model.requires_grad_(False)
        if config.adapter == "shared":
            from peft import LoraConfig, get_peft_model

            layers = self._adapted_layer_ids(model)
            lora = LoraConfig(r=config.adapter_rank, lora_alpha=config.adapter_alpha,
                              lora_dropout=config.adapter_dropout, target_modules=config.adapter_targets,
                              bias="none", layers_to_transform=layers,
                              layers_pattern="layers" if layers is not None else None)
            torch.manual_seed(config.init_seed)
            self._peft = get_peft_model(model, lora)  # injects LoRA layers into `model` in place
            if config.full_finetune:
                model.requires_grad_(True)
        elif config.adapter == "plural":
            self._wrap_plural_adapters(model)
        plural_head = PluralHead(head.weight, config.k, config.head_mode, config.head_rank, config.head_alpha,
                                 self.state, seed=config.init_seed, share_base=not config.full_finetune)
        _set_lm_head(model, plural_head)
        self.model = model

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_base(cls, base: str | nn.Module, config: PluralConfig, dtype=torch.float32,
                  trust_remote_code: bool = False) -> PluralLM:
        """Make a plural model from a base model (name, path, or already-loaded HF model)."""
        from cmpo.models.loading import load_model

        tokenizer = None
        if isinstance(base, (str, os.PathLike)):
            base, tokenizer = load_model(str(base), dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(base, config, tokenizer=tokenizer)

    def _adapted_layer_ids(self, model) -> list[int] | None:
        n = self.config.adapter_layers
        if n is None:
            return None
        total = len(_decoder_layers(model))
        if not 1 <= n <= total:
            raise ValueError(f"adapter_layers={n}: the model has {total} decoder layers")
        return list(range(total - n, total))

    def _wrap_plural_adapters(self, model) -> None:
        targets = set(self.config.adapter_targets)
        layer_ids = self._adapted_layer_ids(model)
        allowed = None
        if layer_ids is not None:
            layers = _decoder_layers(model)
            allowed = {id(m) for i in layer_ids for m in layers[i].modules()}
        found = 0
        for _i, (_name, module) in enumerate(list(model.named_modules())):
            if allowed is not None and id(module) not in allowed:
                continue
            for child_name, child in list(module.named_children()):
                if child_name in targets and isinstance(child, nn.Linear):
                    wrapped = PluralLoRALinear(child, self.config.k, self.config.adapter_rank,
                                               self.config.adapter_alpha, self.state,
                                               seed=self.config.init_seed + 1 + found)
                    setattr(module, child_name, wrapped)
                    found += 1
        if found == 0:
            raise ValueError(f"no linear layers named {sorted(targets)} found for plural adapters")

    # ------------------------------------------------------------------ properties

    @property
    def attributes(self) -> list[str]:
        return self.config.attributes

    @property
    def head(self) -> PluralHead:
        return _get_lm_head(self.model)

    @property
    def trunk(self) -> nn.Module:
        """The transformer without its LM head (e.g. ``LlamaModel``): returns hidden states."""
        return getattr(self.model, self.model.base_model_prefix)

    def weights_tensor(self, weights, device=None) -> torch.Tensor:
        """Validate user weights (dict | 'a=1,b=0' | sequence | tensor [k] or [B, k]) -> float32 tensor."""
        if isinstance(weights, torch.Tensor) and weights.dim() == 2:
            if weights.shape[1] != self.config.k:
                raise SteeringError(f"weights have {weights.shape[1]} columns, model has {self.config.k} attributes")
            if not torch.isfinite(weights).all():
                raise SteeringError("non-finite weight")
            if (weights == 0).all(dim=1).any():
                raise SteeringError("an all-zero weight vector in the batch")
            t = weights.float()
        else:
            t = torch.tensor(resolve_weights(weights, self.attributes), dtype=torch.float32)
        return t.to(device or self.head.base_weight.device)

    def default_weights(self) -> torch.Tensor:
        if self.config.default_weights:
            return self.weights_tensor(self.config.default_weights)
        return torch.full((self.config.k,), 1.0 / self.config.k, device=self.head.base_weight.device)

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids=None, attention_mask=None, weights=None, **kwargs):
        """HF forward with λ-mixed logits. ``weights``: [k] or [B, k]; ``None`` uses the current state."""
        if weights is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        with self.state.use(self._as_tensor(weights)):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def hidden_states(self, input_ids, attention_mask=None, weights=None, reference: bool = False, **kwargs):
        """Last hidden states [B, T, d] of the trunk (plural adapters conditioned on ``weights``)."""
        ctx = self.reference() if reference else self.state.use(self._as_tensor(weights) if weights is not None
                                                                  else self.state.weights)
        with ctx:
            if self._prefix_cache is not None and not kwargs:
                return self._prefix_cache.hidden_states(self.trunk, input_ids, attention_mask)
            out = self.trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    _prefix_cache = None

    def enable_prefix_cache(self) -> FrozenPrefixCache:
        """Cache the output of the frozen decoder layers below the first adapted layer (training speed-up).

        Valid when only the last ``adapter_layers`` layers (and the heads) train: everything below them is
        a fixed function of the tokens, so each sequence runs through those layers once per training run.
        """
        if self.config.full_finetune:
            raise ValueError("the prefix cache needs a frozen trunk (full_finetune=False)")
        layer_ids = self._adapted_layer_ids(self.model)
        start = layer_ids[0] if layer_ids is not None else (len(_decoder_layers(self.model))
                                                          if self.config.adapter == "none" else 0)
        self._prefix_cache = FrozenPrefixCache(start)
        return self._prefix_cache

    def disable_prefix_cache(self) -> None:
        self._prefix_cache = None

    def _as_tensor(self, weights) -> torch.Tensor:
        if isinstance(weights, torch.Tensor):
            return weights.to(self.head.base_weight.device)
        return self.weights_tensor(weights)

    @contextlib.contextmanager
    def steer(self, weights):
        """Within the block, the wrapped HF model (forward, generate) is steered by ``weights``."""
        with self.state.use(self._as_tensor(weights)):
            yield self.model

    @contextlib.contextmanager
    def reference(self):
        """Within the block the model is exactly π_ref: adapters off, base head W0."""
        peft_ctx = self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()
        with peft_ctx, self.state.use(None, reference=True):
            yield self.model

    def gradient_checkpointing_enable(self, **kwargs):
        """HF gradient checkpointing; recomputation restores the λ that was active in the forward pass."""
        state = self.state

        def context_fn():
            snap = state.snapshot()

            @contextlib.contextmanager
            def recompute():
                saved = state.snapshot()
                state.weights, state.reference = snap
                try:
                    yield
                finally:
                    state.weights, state.reference = saved

            return contextlib.nullcontext(), recompute()

        self.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": context_fn, **kwargs}
        )
        if hasattr(self.model, "enable_input_require_grads"):
            self.model.enable_input_require_grads()

    # ------------------------------------------------------------------ fused head

    def mixed_head(self, weights) -> nn.Linear:
        """The exact fused head Σ_j λ_j W_j as one bias-free linear layer (decoding at base-model cost)."""
        w = self._as_tensor(weights)
        fused = self.head.fused_weight(w)  # cached per λ; shared, never modified in place
        layer = nn.Linear(fused.shape[1], fused.shape[0], bias=False, device="meta")
        layer.weight = nn.Parameter(fused, requires_grad=False)
        return layer

    @contextlib.contextmanager
    def fused(self, weights):
        """Within the block the wrapped HF model uses the fused head for ``weights`` (and plural adapters
        steered by the same λ)."""
        w = self._as_tensor(weights)
        plural_head = self.head
        _set_lm_head(self.model, _DtypeAdapter(self.mixed_head(w)))
        try:
            with self.state.use(w):
                yield self.model
        finally:
            _set_lm_head(self.model, plural_head)

    # ------------------------------------------------------------------ save / load / export

    def _saved_keys(self) -> list[str]:
        keys = []
        for name, _ in self.named_parameters():
            if name == "model.lm_head.base_weight" or name.endswith(".base_weight") and "lm_head" in name:
                continue
            if self.config.full_finetune or "lora_" in name or "plural_" in name or "lm_head" in name:
                keys.append(name)
        return keys

    def save(self, out_dir: str | os.PathLike, self_contained: bool = False) -> Path:
        """Write ``cmpo_config.json`` + ``plural.safetensors`` (+ tokenizer) atomically.

        Only weights that differ from the base model are stored; the base is re-loaded from
        ``config.base_model``. ``self_contained=True`` also copies the base model into ``out/base``.
        """
        from safetensors.torch import save_file

        out = Path(out_dir)
        with atomic_dir(out) as tmp:
            sd = self.state_dict()
            tensors = {k: sd[k].detach().contiguous().cpu() for k in self._saved_keys()}
            save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt", "cmpo": "plural"})
            cfg = asdict(self.config)
            if self_contained:
                from cmpo.models.loading import resolve_model_path

                shutil.copytree(resolve_model_path(self.config.base_model), tmp / BASE_DIR_NAME)
                cfg["base_model"] = BASE_DIR_NAME
            (tmp / CONFIG_NAME).write_text(json.dumps({"format": "cmpo-plural", "version": 1, **cfg}, indent=2))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, dtype=torch.float32, device=None,
             trust_remote_code: bool = False) -> PluralLM:
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / CONFIG_NAME).read_text())
        config = PluralConfig.from_dict(meta)
        base_ref = config.base_model
        if (path / base_ref).is_dir():
            base_ref = str(path / base_ref)
        plural = cls.from_base(base_ref, config, dtype=dtype, trust_remote_code=trust_remote_code)
        plural.config.base_model = config.base_model
        if (path / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            plural.tokenizer = AutoTokenizer.from_pretrained(path)
        sd = load_file(path / WEIGHTS_NAME)
        missing, unexpected = plural.load_state_dict(sd, strict=False)
        expected = set(plural._saved_keys())
        if unexpected or expected - set(sd):
            raise ValueError(f"{path / WEIGHTS_NAME}: unexpected {unexpected[:5]}, missing "
                             f"{sorted(expected - set(sd))[:5]}")
        if device is not None:
            plural.to(device)
        plural.eval()
        return plural

    @torch.no_grad()
    def export_state_dict(self, weights) -> dict[str, torch.Tensor]:
        """State dict of the plain base architecture with λ folded in (LoRA merged, fused lm_head)."""
        w = self._as_tensor(weights)
        sd = {}
        modules = dict(self.model.named_modules())
        for name, tensor in self.model.state_dict().items():
            if name.startswith("lm_head.") or ".lora_" in name or ".plural_" in name:
                continue
            if ".base_layer." in name:
                owner_name = name.split(".base_layer.")[0]
                owner = modules[owner_name]
                new_name = name.replace(".base_layer.", ".")
                if name.endswith("weight"):
                    delta = self._delta_for(owner, w)
                    tensor = (tensor.to(torch.float64) + delta).to(tensor.dtype) if delta is not None else tensor
                sd[new_name] = tensor
            else:
                sd[name] = tensor
        head_prefix = [n for n, m in modules.items() if m is self.head][0]
        sd[f"{head_prefix}.weight"] = self.head.fused_weight(w)
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    def _delta_for(self, module, w):
        if isinstance(module, PluralLoRALinear):
            return module.delta_weight(w)
        if hasattr(module, "get_delta_weight") and getattr(module, "active_adapters", None):
            deltas = [module.get_delta_weight(a).to(torch.float64) for a in module.active_adapters
                      if a in getattr(module, "lora_A", {})]
            return sum(deltas) if deltas else None
        return None

    def export(self, weights, out_dir: str | os.PathLike) -> Path:
        """Write a standard HF checkpoint for a fixed λ that ``AutoModelForCausalLM`` loads with no cmpo code."""
        from transformers import AutoModelForCausalLM

        sd = self.export_state_dict(weights)
        config = self.model.config.__class__.from_dict(self.model.config.to_dict())
        config.tie_word_embeddings = False
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(sd, strict=True, assign=True)
        plain.generation_config = self.model.generation_config
        out = Path(out_dir)
        with atomic_dir(out) as tmp:
            plain.save_pretrained(tmp, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            vec = self._as_tensor(weights).tolist()
            (tmp / "cmpo_export.json").write_text(json.dumps(
                {"attributes": self.attributes, "weights": vec, "base_model": self.config.base_model,
                 "template": self.config.template}, indent=2))
        return out

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class _DtypeAdapter(nn.Module):
    """Runs a fused head in its own dtype (fp32) on hidden states of any dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    @property
    def weight(self):
        return self.linear.weight

    def forward(self, hidden):
        return self.linear(hidden.to(self.linear.weight.dtype))


def is_plural_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).exists()
