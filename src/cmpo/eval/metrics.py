"""Evaluation metrics (thesis §5.4) and the conditioned log-probabilities they are computed from.

Pure statistics (numpy/scipy, no model):
  preference accuracy (eq. 5.1)   acc = 1/N Σ_i 1[s(y_c^i) > s(y_r^i)]   (a tie counts as wrong)
  implicit-reward accuracy         acc = 1/N Σ_i 1[(s_c − s_c^ref) > (s_r − s_r^ref)]   (DPO's r = β log π/π_ref)
  rank correlation                 Spearman ρ and Kendall τ-b between model scores and human ratings
  win-rate with ties               outcomes ∈ {+1, 0, −1}, averaged
  confidence intervals             Wilson score interval for proportions, percentile bootstrap for means

Conditioned scores of (prompt, response) rows for any model kind (``conditioned_logprobs``):
  plural  → the λ of the condition as per-example weights      hf      → the model as is
  steerlm → the ACM attribute string after the Assistant turn (thesis Table A.1)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


# ----------------------------------------------------------------------------- confidence intervals


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n = 0."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over rows of ``values`` ([N] or [N, ...]); (nan, nan) if N = 0."""
    x = np.asarray(values, dtype=float)
    n = x.shape[0] if x.ndim else 0
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = np.array([statistic(x[i]) for i in idx])
    lo, hi = np.nanquantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def bootstrap_mean_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Vectorised percentile bootstrap of the mean of ``values`` [N]."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


# ----------------------------------------------------------------------------- metrics


def _finite(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"{name}: non-finite value at row {bad}")


def preference_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> dict:
    """Eq. 5.1: share of pairs with ``chosen[i] > rejected[i]`` (ties are wrong) + Wilson 95% CI."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    if c.shape != r.shape or c.ndim != 1:
        raise ValueError(f"chosen {c.shape} and rejected {r.shape} must be 1-D and the same length")
    _finite("chosen", c)
    _finite("rejected", r)
    n = int(c.size)
    correct = int(np.sum(c > r))
    lo, hi = wilson_interval(correct, n)
    return {"accuracy": correct / n if n else math.nan, "correct": correct, "ties": int(np.sum(c == r)),
            "n": n, "ci95": [lo, hi], "ci_method": "wilson"}


def implicit_reward_accuracy(chosen: Sequence[float], rejected: Sequence[float],
                             ref_chosen: Sequence[float], ref_rejected: Sequence[float]) -> dict:
    """Share of pairs with log π(y_c)/π_ref(y_c) > log π(y_r)/π_ref(y_r) (DPO's reward accuracy)."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    rc, rr = np.asarray(ref_chosen, dtype=float), np.asarray(ref_rejected, dtype=float)
    if not (c.shape == r.shape == rc.shape == rr.shape):
        raise ValueError(f"shapes differ: {c.shape} {r.shape} {rc.shape} {rr.shape}")
    out = preference_accuracy(c - rc, r - rr)
    out["mean_margin"] = float(np.mean((c - rc) - (r - rr))) if c.size else math.nan
    return out


def rank_correlation(scores: Sequence[float], ratings: Sequence[float]) -> dict:
    """Spearman ρ and Kendall τ-b (scipy) between model scores and human ratings, with p-values.

    Constant input (no ranking information) gives nan, not an error.
    """
    from scipy import stats

    s, h = np.asarray(scores, dtype=float), np.asarray(ratings, dtype=float)
    if s.shape != h.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and ratings {h.shape} must be 1-D and the same length")
    _finite("scores", s)
    _finite("ratings", h)
    n = int(s.size)
    if n < 2 or np.all(s == s[0]) or np.all(h == h[0]):
        return {"spearman": math.nan, "spearman_p": math.nan, "kendall": math.nan, "kendall_p": math.nan, "n": n}
    sp = stats.spearmanr(s, h)
    kt = stats.kendalltau(s, h)
    return {"spearman": float(sp.statistic), "spearman_p": float(sp.pvalue),
            "kendall": float(kt.statistic), "kendall_p": float(kt.pvalue), "n": n}


def win_rate(outcomes: Sequence[int], n_boot: int = 2000, seed: int = 0) -> dict:
    """Win-rate with ties: mean of outcomes ∈ {+1 win, 0 tie, −1 loss} + bootstrap 95% CI."""
    o = np.asarray(outcomes, dtype=float)
    if o.ndim != 1 or not np.isin(o, (-1, 0, 1)).all():
        raise ValueError("outcomes must be a 1-D sequence of +1, 0 and -1")
    n = int(o.size)
    return {"win_rate": float(o.mean()) if n else math.nan, "wins": int(np.sum(o == 1)),
            "ties": int(np.sum(o == 0)), "losses": int(np.sum(o == -1)), "n": n,
            "ci95": list(bootstrap_mean_ci(o, n_boot=n_boot, seed=seed)), "ci_method": "bootstrap"}


# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Condition:
    """How a model is told "be <attribute>": a λ (plural), ACM attribute values (steerlm), or nothing."""

    weights: tuple[float, ...] | None = None
    acm: tuple[tuple[str, float], ...] | None = None  # ((attribute, value), ...) in the ACM's order

    @property
    def acm_values(self) -> dict[str, float] | None:
        return None if self.acm is None else dict(self.acm)

    def describe(self) -> str:
        if self.weights is not None:
            return "λ=(" + ", ".join(f"{w:g}" for w in self.weights) + ")"
        if self.acm is not None:
            return "acm " + ",".join(f"{a}:{v:g}" for a, v in self.acm)
        return "as is"


ACM_ON, ACM_OFF = 4, 0


def single_attribute_condition(model, attribute: str) -> Condition:
    """Thesis §5.4: CMPO gets the one-hot λ; ACM gets ``attribute:4`` and 0 for the rest; others as is."""
    kind = getattr(model, "kind", "hf")
    attrs = list(getattr(model, "attributes", None) or [])
    if getattr(model, "is_reference", False):
        return Condition()
    if kind in ("plural", "steerlm") and attribute not in attrs:
        raise ValueError(f"attribute {attribute!r} is not one of the {kind} model's attributes {attrs}")
    if kind == "plural":
        return Condition(weights=tuple(1.0 if a == attribute else 0.0 for a in attrs))
    if kind == "steerlm":
        return Condition(acm=tuple((a, ACM_ON if a == attribute else ACM_OFF) for a in attrs))
    return Condition()


def mixed_condition(model, weights: Sequence[float]) -> Condition:
    """A λ over the model's attributes: plural as is; steerlm → values round(4·λ_j / max λ)."""
    kind = getattr(model, "kind", "hf")
    if getattr(model, "is_reference", False):
        return Condition()
    if kind == "plural":
        return Condition(weights=tuple(float(w) for w in weights))
    if kind == "steerlm":
        top = max(max(weights), 1e-12)
        return Condition(acm=tuple((a, round(ACM_ON * max(w, 0.0) / top))
                                   for a, w in zip(model.attributes, weights)))
    return Condition()


# ----------------------------------------------------------------------------- conditioned log-probs


def conditioned_logprobs(model, prompts: Sequence, responses: Sequence[str],
                         conditions: Condition | Sequence[Condition] = Condition(), reference: bool = False,
                         normalize: bool = False, batch_size: int = 8, max_length: int | None = 1024,
                         progress: bool = False, finished: Sequence[bool] | None = None) -> np.ndarray:
    """log π(response | prompt, condition) for every row -> float64 [N] (÷ response tokens if ``normalize``);
    repeated rows (same prompt, response, condition and ``finished``) are scored once.

    ``model``: a :class:`cmpo.serve.generate.SteerableModel`. ``reference=True`` (or ``model.reference()``)
    scores with the plural model's exact π_ref (plural kind only). Responses are tokenized with the model's own
    template (including the end-of-turn token unless ``finished[i]`` is False), exactly as in training.
    """
    import torch

    from cmpo.train.logprobs import collate_sequences, sequence_logprobs

    n = len(prompts)
    if len(responses) != n:
        raise ValueError(f"{n} prompts but {len(responses)} responses")
    conds = [conditions] * n if isinstance(conditions, Condition) else list(conditions)
    if len(conds) != n:
        raise ValueError(f"{n} prompts but {len(conds)} conditions")
    fin = [True] * n if finished is None else [bool(f) for f in finished]
    keys = [(json.dumps(p, sort_keys=True, ensure_ascii=False), r, c, f)
            for p, r, c, f in zip(prompts, responses, conds, fin)]
    first: dict[tuple, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    if len(first) < n:  # pairs share responses: score each distinct row once
        uniq = list(first.values())
        lp = conditioned_logprobs(model, [prompts[i] for i in uniq], [responses[i] for i in uniq],
                                  [conds[i] for i in uniq], reference, normalize, batch_size, max_length, progress,
                                  [fin[i] for i in uniq])
        at = {key: j for j, key in enumerate(first)}
        return lp[[at[key] for key in keys]]
    kind = getattr(model, "kind", "hf")
    reference = reference or getattr(model, "is_reference", False)
    if reference and kind != "plural":
        raise ValueError(f"reference=True needs a plural model (its exact π_ref); {kind!r} models are scored "
                         "as is: pass the reference model itself instead")
    tok, template = model.tokenizer, model.template
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    net = model.model
    device = next(net.parameters()).device
    out = np.zeros(n, dtype=np.float64)
    order = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        order = tqdm(order, desc="log-probs", unit="batch")
    for start in order:
        rows = range(start, min(n, start + batch_size))
        p_ids, r_ids = [], []
        for i in rows:
            c = conds[i]
            attrs = _acm_string(model, c) if kind == "steerlm" else None
            p, r = template.encode(prompts[i], responses[i], attributes=attrs, finished=fin[i])
            p_ids.append(p)
            r_ids.append(r)
        batch = collate_sequences(p_ids, r_ids, pad_id=pad, max_length=max_length)
        batch = {k: v.to(device) for k, v in batch.items()}
        weights = None
        if kind == "plural" and not reference:
            missing = [i for i in rows if conds[i].weights is None]
            if missing:
                raise ValueError(f"row {missing[0]}: a plural model needs a λ (Condition.weights)")
            weights = torch.tensor([conds[i].weights for i in rows], dtype=torch.float32, device=device)
        with torch.no_grad():
            lp = sequence_logprobs(net, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                   weights=weights, reference=reference)
        lp = lp.double().cpu().numpy()
        if normalize:
            lp = lp / batch["response_mask"][:, 1:].sum(1).clamp(min=1).cpu().numpy()
        out[start:start + len(rows)] = lp
    return out


def _acm_string(model, cond: Condition) -> str:
    from cmpo.serve.generate import format_acm_attributes

    return format_acm_attributes(cond.acm_values or {}, model.attributes)


def reference_perplexity(reference_model, prompts: Sequence, responses: Sequence[str],
                         batch_size: int = 8) -> np.ndarray:
    """exp(−mean token log π_ref) of each response (its end-of-turn token included) -> [N]."""
    if getattr(reference_model, "kind", "") == "plural" and not getattr(reference_model, "is_reference", False):
        reference_model = reference_model.reference()
    lp = conditioned_logprobs(reference_model, prompts, responses, Condition(), normalize=True,
                              batch_size=batch_size)
    return np.exp(-lp)


# ----------------------------------------------------------------------------- models under evaluation


@dataclass
class EvalModel:
    """A named contestant: one steerable model for every attribute (CMPO, ACM, SFT), or per-attribute models
    (separate DPO models, ``models[attribute]``). ``models[None]`` is the one-model case."""

    name: str
    models: dict

    @classmethod
    def load(cls, name: str, spec: str, dtype="float32", device=None) -> EvalModel:
        """``spec``: a model dir / short name, or comma-separated per-attribute DPO dirs (each with
        ``cmpo_model.json`` naming its ``attribute``)."""
        from pathlib import Path

        from cmpo.serve.generate import SteerableModel

        paths = [p for p in spec.split(",") if p]
        if len(paths) == 1:
            return cls(name, {None: SteerableModel.load(paths[0], dtype=dtype, device=device)})
        models = {}
        for p in paths:
            meta_file = Path(p) / "cmpo_model.json"
            attr = json.loads(meta_file.read_text()).get("attribute") if meta_file.exists() else None
            if not attr:
                raise ValueError(f"{meta_file}: field 'attribute' missing: per-attribute models must be DPO "
                                 "model dirs written by `cmpo train dpo`")
            if attr in models:
                raise ValueError(f"model {name!r}: two models for attribute {attr!r}")
            models[attr] = SteerableModel.load(p, dtype=dtype, device=device)
        return cls(name, models)

    @property
    def kind(self) -> str:
        if None in self.models:
            return self.models[None].kind
        return "per-attribute"

    @property
    def attributes(self) -> list[str]:
        if None in self.models:
            return list(self.models[None].attributes)
        return [a for a in self.models if a is not None]

    def covers(self, attribute: str) -> bool:
        if None in self.models:
            m = self.models[None]
            return m.kind == "hf" or attribute in m.attributes
        return attribute in self.models

    def for_attribute(self, attribute: str):
        """-> (SteerableModel, Condition) that make this contestant "be <attribute>"."""
        if None in self.models:
            m = self.models[None]
            return m, single_attribute_condition(m, attribute)
        if attribute not in self.models:
            raise ValueError(f"model {self.name!r} has no model for attribute {attribute!r}")
        return self.models[attribute], Condition()

    def for_weights(self, attributes: Sequence[str], weights: Sequence[float]):
        """-> (SteerableModel, Condition) for a λ over ``attributes`` (plural / ACM only)."""
        m = self.models.get(None)
        if m is None or m.kind not in ("plural", "steerlm"):
            raise ValueError(f"model {self.name!r} ({self.kind}) cannot be steered by a weight vector")
        full = [0.0] * len(m.attributes)
        for a, w in zip(attributes, weights):
            full[m.attributes.index(a)] = float(w)
        return m, mixed_condition(m, full)


def resolve_reference(model, reference):
    """The π_ref a model is compared against: ``reference`` (a SteerableModel) or, when it is None,
    the plural model's own exact reference policy."""
    if reference is not None:
        return reference
    if getattr(model, "kind", None) == "plural":
        return model.reference()
    raise ValueError(f"a {getattr(model, 'kind', '?')} model has no built-in reference policy: pass --reference")


# ----------------------------------------------------------------------------- evaluations on prepared data


def sample_rows(n_rows: int, limit: int | None, seed: int) -> list[int]:
    """``limit`` row indices out of ``n_rows`` (seeded, sorted), or all of them."""
    if limit is None or limit >= n_rows:
        return list(range(n_rows))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n_rows, size=limit, replace=False).tolist())


def evaluate_preference_accuracy(em: EvalModel, pairs, attributes: Sequence[str], reference=None,
                                 max_pairs: int | None = 200, seed: int = 0, batch_size: int = 8,
                                 progress: bool = False) -> dict:
    """Per attribute: eq. 5.1 accuracy on the validation pairs of that attribute, under the contestant's
    single-attribute condition, and the implicit-reward accuracy against the reference.

    ``pairs``: a dataset/list of rows with ``prompt``, ``chosen``, ``rejected``, ``attribute``.
    """
    by_attr: dict[str, list[int]] = {}
    for i, a in enumerate(pairs["attribute"] if hasattr(pairs, "column_names") else [r["attribute"] for r in pairs]):
        by_attr.setdefault(a, []).append(i)
    # every attribute's rows [chosen..., rejected...] scored in one call per model (and per reference), so
    # responses shared between pairs and attributes are scored once
    jobs = []  # (attr, model, cond, rows, first row in its model's call)
    calls: dict[int, dict] = {}  # id(model) -> {"model", "prompts", "responses", "conds", "finished"}
    for attr in attributes:
        if not em.covers(attr) or attr not in by_attr:
            continue
        rows = [pairs[by_attr[attr][j]] for j in sample_rows(len(by_attr[attr]), max_pairs, seed)]
        model, cond = em.for_attribute(attr)
        c = calls.setdefault(id(model), {"model": model, "prompts": [], "responses": [], "conds": [],
                                          "finished": []})
        jobs.append((attr, model, cond, len(rows), len(c["prompts"])))
        c["prompts"] += [r["prompt"] for r in rows] * 2
        c["responses"] += [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
        c["conds"] += [cond] * (2 * len(rows))
        c["finished"] += ([r.get("chosen_finished", True) for r in rows]
                          + [r.get("rejected_finished", True) for r in rows])
    scores, ref_scores = {}, {}
    for key, c in calls.items():
        scores[key] = conditioned_logprobs(c["model"], c["prompts"], c["responses"], c["conds"],
                                           batch_size=batch_size, progress=progress, finished=c["finished"])
        ref = (resolve_reference(c["model"], reference) if (reference is not None or c["model"].kind == "plural")
               else None)
        if ref is not None:
            ref_scores[key] = conditioned_logprobs(ref, c["prompts"], c["responses"], Condition(),
                                                   batch_size=batch_size, finished=c["finished"])
    out = {}
    for attr, model, cond, n, at in jobs:
        lp = scores[id(model)][at:at + 2 * n]
        res = {"condition": cond.describe(), "policy": preference_accuracy(lp[:n], lp[n:])}
        if id(model) in ref_scores:
            rlp = ref_scores[id(model)][at:at + 2 * n]
            res["implicit_reward"] = implicit_reward_accuracy(lp[:n], lp[n:], rlp[:n], rlp[n:])
        out[attr] = res
    return out


def evaluate_rank_correlation(em: EvalModel, rated, attributes: Sequence[str], normalize: bool = True,
                              max_rows: int | None = 200, seed: int = 0, batch_size: int = 8,
                              progress: bool = False) -> dict:
    """Per attribute: Spearman/Kendall between the conditioned score of each response (per-token mean
    log-prob if ``normalize``, else the sum) and its human rating of that attribute.

    ``rated``: rows with ``prompt``, ``response`` and ``ratings`` (a dict or a JSON string {attribute: rating}).
    """
    idx = sample_rows(len(rated), max_rows, seed)
    rows = [rated[i] for i in idx]
    ratings = []
    for i, r in zip(idx, rows):
        raw = r["ratings"]
        try:
            ratings.append(json.loads(raw) if isinstance(raw, str) else dict(raw or {}))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise ValueError(f"row {i}: field 'ratings' is not a JSON object: {raw!r}") from None
    out = {}
    for attr in attributes:
        keep = [j for j, rt in enumerate(ratings) if rt.get(attr) is not None]
        if not keep or not em.covers(attr):
            continue
        model, cond = em.for_attribute(attr)
        scores = conditioned_logprobs(model, [rows[j]["prompt"] for j in keep], [rows[j]["response"] for j in keep],
                                      cond, normalize=normalize, batch_size=batch_size, progress=progress,
                                      finished=[rows[j].get("finished", True) for j in keep])
        res = rank_correlation(scores, [float(ratings[j][attr]) for j in keep])
        res.update(condition=cond.describe(), score="mean token log-prob" if normalize else "sum log-prob")
        out[attr] = res
    return out
