"""Generation from any model cmpo trains, behind one interface (:class:`SteerableModel`); the ``cmpo generate``
command on top of it is :mod:`cmpo.serve.generate_cli`.

Kinds:
  ``plural``   a CMPO model (``cmpo_config.json``): next-token logits = Σ_j λ_j h W_j. One λ for a batch runs
               the fused head (one [V, d] matmul, base-model cost); different λs in one batch run the
               per-example low-rank mix through ``PluralLM.steer(λ [B, k])``.
  ``steerlm``  a SteerLM ACM (``cmpo_model.json`` kind ``steerlm-acm``): the prompt carries an attribute string
               (``helpfulness:4,humor:0``) after the assistant turn; unspecified attributes are 0.
  ``hf``       anything else (base, SFT, DPO, exported steering): plain Hugging Face generation.

Batches are left-padded (pad = eos for SmolLM2) so every row's new tokens start at the same column; only new
tokens are decoded, and text is cut at stop strings (the caller's plus the template's). The repetition
penalty counts generated tokens only and never penalises EOS: transformers' own penalty also counts prompt
tokens, including the ``<|im_end|>`` that closes each turn, so a penalised model rarely stops.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmpo.models.steering import SteeringError

MODEL_META = "cmpo_model.json"
EXPORT_META = "cmpo_export.json"


@dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def validate(self) -> GenerationOptions:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        return self

    def sampling_key(self) -> tuple:
        """Options that must be equal for requests to share one ``generate`` call."""
        if not self.do_sample:
            return (False, self.repetition_penalty)
        return (True, self.temperature, self.top_p, self.top_k, self.repetition_penalty, self.seed)


# --------------------------------------------------------------------------- SteerLM attribute strings


def format_acm_attributes(values: dict | None, attributes: Sequence[str]) -> str:
    """``{"humor": 4}`` -> ``"helpfulness:0,humor:4"`` in the ACM's attribute order (missing -> 0)."""
    try:  # the SteerLM trainer owns the canonical format; use it when present
        from cmpo.train.steerlm import format_attributes  # type: ignore

        return format_attributes(values or {}, list(attributes))
    except ImportError:
        pass
    values = dict(values or {})
    unknown = [n for n in values if n not in attributes]
    if unknown:
        raise SteeringError(f"unknown SteerLM attribute(s) {unknown}; this model has {list(attributes)}")
    parts = []
    for name in attributes:
        v = values.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SteeringError(f"SteerLM attribute {name!r} needs a finite number, got {v!r}")
        parts.append(f"{name}:{int(v) if float(v).is_integer() else v}")
    return ",".join(parts)


def parse_attribute_values(spec: str) -> dict[str, float]:
    """``"humor=4,helpfulness=3"`` (or ``:``) -> ``{"humor": 4, "helpfulness": 3}``."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        sep = "=" if "=" in part else ":"
        if sep not in part:
            raise SteeringError(f"bad attribute value {part!r}: expected name=value, e.g. humor=4")
        name, value = (s.strip() for s in part.split(sep, 1))
        try:
            v = float(value)
        except ValueError:
            raise SteeringError(f"bad value for {name!r}: {value!r} is not a number") from None
        out[name] = int(v) if v.is_integer() else v
    return out


# --------------------------------------------------------------------------- generation internals


@dataclass
class Row:
    """One sequence in a batch: its prompt tokens, λ, limits, and (filled in) the result.

    ``on_text(delta)`` is called as text becomes final (streaming); ``cancel`` stops the row early.
    """

    prompt_ids: list[int]
    weights: object = None  # torch.Tensor [k] for plural models
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None


def _holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing chars of ``text`` could start a stop string (must not be streamed yet)."""
    n = 0
    for s in stops:
        for i in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:i]):
                n = max(n, i)
                break
    return n


def _row_monitor(rows: list[Row], prompt_len: int, tokenizer, eos_ids: set[int], extra_stops: list[str]):
    """A StoppingCriteria that also tracks each row's tokens, cuts at stop strings and streams final text."""
    import torch
    from transformers import StoppingCriteria

    specials = [s for s in getattr(tokenizer, "all_special_tokens", []) if s]

    def clean(text: str) -> str:
        for s in specials:
            text = text.replace(s, "")
        return text

    class Monitor(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(len(rows), dtype=torch.bool, device=input_ids.device)
            last = input_ids[:, -1].tolist()
            for i, row in enumerate(rows):
                if row.finish_reason is None:
                    self.step(row, last[i])
                done[i] = row.finish_reason is not None
            return done

        @staticmethod
        def step(row: Row, token: int) -> None:
            if token in eos_ids:
                row.finish_reason = "stop"
                final = row.text
            else:
                row.tokens.append(token)
                raw = tokenizer.decode(row.tokens, skip_special_tokens=False)
                stops = list(row.stop) + extra_stops
                cut = min((raw.find(s) for s in stops if s in raw), default=-1)
                if cut >= 0:
                    row.finish_reason = "stop"
                    final = clean(raw[:cut])
                else:
                    text = clean(raw)
                    if len(row.tokens) >= row.max_new_tokens:
                        row.finish_reason = "length"
                    elif row.cancel is not None and row.cancel.is_set():
                        row.finish_reason = "cancelled"
                    if row.finish_reason is not None:
                        final = text
                    else:
                        row.text = text
                        # Hold back a possible stop-string prefix and an unfinished UTF-8 character.
                        safe = len(text) - _holdback(text, stops)
                        while safe > row.emitted and text[safe - 1] == "\ufffd":
                            safe -= 1
                        if row.on_text is not None and safe > row.emitted:
                            row.on_text(text[row.emitted:safe])
                        row.emitted = max(row.emitted, safe)
                        return
            row.text = final
            if row.on_text is not None and len(final) > row.emitted:
                row.on_text(final[row.emitted:])
            row.emitted = len(final)

    return Monitor()


# --------------------------------------------------------------------------- the model


class SteerableModel:
    """Any model cmpo trains, behind one interface."""

    def __init__(self, kind: str, model, tokenizer, template, attributes: list[str] | None = None,
                 meta: dict | None = None, is_reference: bool = False, path: str | None = None):
        self.kind = kind
        self.model = model  # PluralLM for kind plural, else the HF model
        self.tokenizer = tokenizer
        self.template = template
        self.attributes = list(attributes or [])
        self.meta = dict(meta or {})
        self.is_reference = is_reference
        self.path = path
        self.lock = threading.RLock()  # PluralLM's steering state and head are shared: one generate at a time
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, name_or_path: str, dtype="float32", device=None) -> SteerableModel:
        """Auto-detect the kind: ``cmpo_config.json`` -> plural; ``cmpo_model.json`` kind ``steerlm-acm`` ->
        steerlm; any other dir / HF id / short name (``smollm2-135m``, ``tiny-random``) -> hf."""
        import torch

        from cmpo.data.templates import PromptTemplate
        from cmpo.models.loading import load_model, load_tokenizer
        from cmpo.models.plural import PluralLM, is_plural_dir

        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")  # noqa: TRY004 - bad user input, not a programming error
            dtype = getattr(torch, dtype)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        path = Path(str(name_or_path))
        if path.is_dir() and is_plural_dir(path):
            plural = PluralLM.load(path, dtype=dtype, device=device)
            tok = plural.tokenizer or load_tokenizer(plural.config.base_model)
            plural.tokenizer = tok
            template = PromptTemplate.resolve(plural.config.template, tok)
            return cls("plural", plural, tok, template, plural.attributes, path=str(path))
        meta = {}
        if path.is_dir() and (path / MODEL_META).exists():
            meta = _read_json(path / MODEL_META)
        elif path.is_dir() and (path / EXPORT_META).exists():
            meta = {"kind": "export", **_read_json(path / EXPORT_META)}
        model, tok = load_model(str(name_or_path), dtype=dtype, device=device)
        template = PromptTemplate.resolve(meta.get("template"), tok)
        if meta.get("kind") == "steerlm-acm":
            attrs = meta.get("attributes")
            if not isinstance(attrs, list) or not attrs:
                raise ValueError(f"{path / MODEL_META}: field 'attributes' must be a non-empty list")
            template.attribute_prefix = meta.get("attribute_prefix", "") or ""
            return cls("steerlm", model, tok, template, attrs, meta=meta, path=str(path))
        return cls("hf", model, tok, template, [], meta=meta, path=str(name_or_path))

    def reference(self) -> SteerableModel:
        """Plural: the exact reference policy π_ref (adapters off, base head), sharing weights. Else self."""
        if self.kind != "plural":
            return self
        ref = SteerableModel(self.kind, self.model, self.tokenizer, self.template, self.attributes,
                             meta=self.meta, is_reference=True, path=self.path)
        ref.lock = self.lock
        return ref

    # ------------------------------------------------------------------ weights and prompts

    @property
    def device(self):
        return next(self.model.parameters()).device

    def default_weights(self) -> list[float] | None:
        from cmpo.models.steering import resolve_weights

        if self.kind != "plural":
            return None
        cfg = self.model.config
        if cfg.default_weights:
            return resolve_weights(cfg.default_weights, self.attributes)
        return [1.0 / cfg.k] * cfg.k  # PluralLM.default_weights(), as exact Python floats

    def resolve_weights(self, weights) -> list[float] | None:
        """One user λ (dict | "a=1,b=0" | list | tensor | None) -> list aligned with ``attributes``."""
        from cmpo.models.steering import resolve_weights

        if self.kind != "plural" or self.is_reference:
            if weights is not None:
                what = "the reference policy" if self.is_reference else f"a {self.kind} model"
                raise SteeringError(f"steering weights given but {what} has no steerable heads")
            return None
        if weights is None:
            return self.default_weights()
        return resolve_weights(weights, self.attributes)

    def _per_prompt(self, value, n: int, is_single: Callable[[object], bool]) -> list:
        if isinstance(value, (list, tuple)) and not is_single(value):
            if len(value) != n:
                raise ValueError(f"got {len(value)} per-prompt values for {n} prompts")
            return list(value)
        return [value] * n

    def prompt_text(self, prompt, attributes: dict | None = None, system: str | None = None) -> str:
        """The exact text the model sees (training's template; ACM attribute string for SteerLM)."""
        attr_str = None
        if self.kind == "steerlm":
            attr_str = format_acm_attributes(attributes, self.attributes)
        elif attributes:
            raise SteeringError(f"attributes= (SteerLM conditioning) given to a {self.kind} model")
        return self.template.render_prompt(prompt, system=system, attributes=attr_str)

    def encode_prompt(self, prompt, attributes: dict | None = None) -> list[int]:
        text = self.prompt_text(prompt, attributes)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list, weights=None, attributes: dict | list | None = None,
                 options: GenerationOptions | None = None, batch_size: int = 8,
                 progress: bool = False) -> list[str]:
        """Generate one response per prompt (a string or a conversation).

        ``weights``: one λ for all prompts, or a list of per-prompt λs (``None`` entries -> default weights).
        ``attributes``: SteerLM values, one dict or one per prompt. Returns only the new text.
        """
        options = (options or GenerationOptions()).validate()
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list (of strings or conversations)")
        n = len(prompts)
        per_w = self._per_prompt(weights, n, _is_single_weight)
        per_a = self._per_prompt(attributes, n, lambda v: isinstance(v, dict))
        rows = []
        for p, w, a in zip(prompts, per_w, per_a):
            vec = self.resolve_weights(w)
            rows.append(Row(self.encode_prompt(p, a), weights=vec, max_new_tokens=options.max_new_tokens,
                            stop=list(options.stop)))
        chunks = [rows[i:i + batch_size] for i in range(0, n, max(1, batch_size))]
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="generate", unit="batch")
        for chunk in chunks:
            self.generate_rows(chunk, options)
        return [r.text for r in rows]

    def generate_rows(self, rows: list[Row], options: GenerationOptions) -> list[Row]:
        """Run one ``generate`` call over ``rows`` (which share ``options``' sampling settings; each row has
        its own λ, max_new_tokens and stop strings). Fills ``row.text`` / ``row.finish_reason``."""
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        from cmpo.data.templates import stop_strings
        from cmpo.serve.processors import make_processors, sampling_in_processors

        if not rows:
            return rows
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos_ids = _eos_ids(self.hf_model, tok)
        t = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), t), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: new tokens start at column t for every row
            ids[i, t - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, t - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        config = GenerationConfig(
            max_new_tokens=max(r.max_new_tokens for r in rows), do_sample=options.do_sample,
            pad_token_id=pad, eos_token_id=sorted(eos_ids), bos_token_id=getattr(tok, "bos_token_id", None),
        )
        if not options.do_sample:
            config.temperature, config.top_p, config.top_k = None, None, None
        elif sampling_in_processors(True, options.top_p, options.top_k):  # make_processors applies them
            config.temperature, config.top_p, config.top_k = 1.0, 1.0, 0  # explicit no-ops, not model defaults
        else:
            config.temperature, config.top_p, config.top_k = options.temperature, options.top_p, options.top_k
        monitor = _row_monitor(rows, t, tok, eos_ids, stop_strings(self.template))
        with self.lock, torch.no_grad(), self._head_context(rows):
            if options.seed is not None:
                torch.manual_seed(options.seed)
            self.hf_model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config,
                logits_processor=make_processors(t, float(options.repetition_penalty), sorted(eos_ids),
                                                 options.do_sample, options.temperature, options.top_p,
                                                 options.top_k),
                stopping_criteria=StoppingCriteriaList([monitor]),
            )
        for r in rows:
            if r.finish_reason is None:  # generate stopped at max_new_tokens before the monitor saw it
                r.finish_reason = "length"
        return rows

    @property
    def hf_model(self):
        return self.model.model if self.kind == "plural" else self.model

    def _head_context(self, rows: list[Row]):
        import torch

        if self.kind != "plural":
            return contextlib.nullcontext()
        if self.is_reference:
            return self.model.reference()
        vecs = [tuple(r.weights) for r in rows]
        if len(set(vecs)) == 1:  # one λ: fold the heads into one matrix (base-model decoding cost)
            return self.model.fused(list(vecs[0]))
        return self.model.steer(torch.tensor(vecs, dtype=torch.float32, device=self.device))


def _is_single_weight(v) -> bool:
    """A list of numbers is one λ; a list of dicts/strings/lists/None is one λ per prompt."""
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _eos_ids(model, tok) -> set[int]:
    ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(eos)
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")  # noqa: TRY004 - bad user input, not a programming error
    return data
