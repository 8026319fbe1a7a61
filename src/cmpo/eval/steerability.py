"""Does the model steer? The k×k effect matrix, the two-attribute Pareto sweep, and quality guards.

Effect matrix (rows: condition i = "be attribute i", columns: scored attribute j), over prompts p:

    E[i, j] = mean_p ( s_j(y_p^(i)) − s_j(y_p^ref) )      y^(i): output under condition i, y^ref: reference output

with percentile-bootstrap 95% CIs over prompts. A steerable model has a dominant diagonal: we report the
diagonal mean, the off-diagonal mean, per-row flags E[i,i] > max_{j≠i} E[i,j] ("the condition moves its own
attribute most") and per-column flags E[j,j] > max_{i≠j} E[i,j] ("no other condition moves attribute j more").

Pareto sweep for attributes (a, b): λ = (t, 1 − t) on a grid of t, mean scores (s_a, s_b) per t. The
hypervolume (area dominated by the front, maximising both scores) is measured from the reference point
``(0, 0)`` — the lowest Likert rating, so hypervolumes of different models are comparable (max 16 for 0–4).

Quality guards per condition: share of finished outputs (EOS or a stop string within the token budget), the
mean perplexity of the outputs under the reference model (fluency drift), and the share of degenerate outputs
(:func:`cmpo.data.quality.is_degenerate`: mostly non-letters, or word bigrams repeating — how rule raters get reward-hacked).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cmpo.data.quality import is_degenerate
from cmpo.eval.metrics import Condition, bootstrap_mean_ci, reference_perplexity, resolve_reference

__all__ = ["effect_matrix", "evaluate_pareto", "evaluate_steerability", "hypervolume_2d", "is_degenerate",
           "pareto_front"]


def effect_matrix(scores: np.ndarray, ref_scores: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """``scores`` [k_cond, k_attr, P] and ``ref_scores`` [k_attr, P] -> effect matrix with CIs and flags.

    Conditions and scored attributes are in the same order (row i and column i are the same attribute).
    """
    s, r = np.asarray(scores, dtype=float), np.asarray(ref_scores, dtype=float)
    if s.ndim != 3 or r.shape != s.shape[1:]:
        raise ValueError(f"scores {s.shape} must be [conditions, attributes, prompts], ref {r.shape} "
                         "[attributes, prompts]")
    kc, ka, _ = s.shape
    if kc != ka:
        raise ValueError(f"{kc} conditions but {ka} scored attributes: the effect matrix must be square")
    diff = s - r[None]
    eff = diff.mean(-1)
    lo, hi = np.zeros_like(eff), np.zeros_like(eff)
    for i in range(kc):
        for j in range(ka):
            lo[i, j], hi[i, j] = bootstrap_mean_ci(diff[i, j], n_boot=n_boot, seed=seed)
    off = ~np.eye(kc, dtype=bool)
    rows = [bool(kc == 1 or eff[i, i] > eff[i][off[i]].max()) for i in range(kc)]
    cols = [bool(kc == 1 or eff[j, j] > eff[:, j][off[:, j]].max()) for j in range(ka)]
    return {"effect": eff.tolist(), "ci95_low": lo.tolist(), "ci95_high": hi.tolist(),
            "diagonal_mean": float(np.diag(eff).mean()),
            "off_diagonal_mean": float(eff[off].mean()) if kc > 1 else float("nan"),
            "diagonal_beats_row": rows, "diagonal_beats_column": cols,
            "diagonal_ci_excludes_zero": [bool(lo[i, i] > 0 or hi[i, i] < 0) for i in range(kc)],
            "n_prompts": int(s.shape[2])}


def hypervolume_2d(points: Sequence[Sequence[float]], ref: Sequence[float] = (0.0, 0.0)) -> float:
    """Area dominated by ``points`` (maximising both coordinates) and bounded below by ``ref``."""
    pts = sorted((float(x), float(y)) for x, y in points if x > ref[0] and y > ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in reversed(pts):  # sweep from the largest x; each point adds the strip above the best y so far
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (maximising both coordinates)."""
    p = [tuple(map(float, q)) for q in points]
    keep = []
    for i, (x, y) in enumerate(p):
        dominated = any((u >= x and v >= y) and (u > x or v > y) for j, (u, v) in enumerate(p) if j != i)
        if not dominated:
            keep.append(i)
    return keep


def _score_matrix(scorer, prompts, texts, finished, attributes) -> np.ndarray:
    """[len(attributes), P] scores of ``texts`` on each attribute."""
    return np.stack([scorer.score(prompts, texts, a, finished=finished) for a in attributes])


def evaluate_steerability(em, prompts: Sequence, scorer, generations, reference=None,
                          attributes: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0,
                          perplexity: bool = True, batch_size: int = 8) -> dict:
    """Generate under each single-attribute condition and from the reference; score everything on every
    attribute the scorer and the contestant share; effect matrix + quality guards."""
    attrs = [a for a in (attributes or em.attributes) if em.covers(a) and scorer.supports(a)]
    if not attrs:
        raise ValueError(f"model {em.name!r}: no attribute is both steerable ({em.attributes}) and scored by "
                         f"the {getattr(scorer, 'name', 'scorer')} scorer")
    ref_model = None
    cond_scores, guards = [], {}
    for a in attrs:
        model, cond = em.for_attribute(a)
        ref_model = resolve_reference(model, reference)
        texts, fin = generations.get(model, prompts, cond)
        cond_scores.append(_score_matrix(scorer, prompts, texts, fin, attrs))
        guards[a] = _guards(ref_model, prompts, texts, fin, perplexity, batch_size) | {"condition": cond.describe()}
    ref_texts, ref_fin = generations.get(ref_model, prompts, Condition())
    ref_scores = _score_matrix(scorer, prompts, ref_texts, ref_fin, attrs)
    out = effect_matrix(np.stack(cond_scores), ref_scores, n_boot=n_boot, seed=seed)
    guards["reference"] = _guards(ref_model, prompts, ref_texts, ref_fin, perplexity, batch_size)
    out.update(attributes=attrs, scorer=getattr(scorer, "name", type(scorer).__name__), guards=guards,
               reference_mean_scores=ref_scores.mean(-1).tolist())
    return out


def _guards(ref_model, prompts, texts, finished, perplexity: bool, batch_size: int) -> dict:
    g = {"finished": float(np.mean(finished)) if finished else float("nan"),
         "mean_words": float(np.mean([len(t.split()) for t in texts])) if texts else float("nan"), "n": len(texts),
         "degenerate": float(np.mean([is_degenerate(t) for t in texts])) if texts else float("nan")}
    if perplexity and texts:
        ppl = reference_perplexity(ref_model, prompts, texts, batch_size)
        g["reference_perplexity"] = float(np.mean(ppl))
        g["reference_perplexity_median"] = float(np.median(ppl))  # robust to one garbage output
    return g


def pareto_weights(grid: int) -> list[tuple[float, float]]:
    """The sweep λ = (t, 1 − t) for ``grid`` values of t from 1 to 0."""
    return [(float(t), float(1 - t)) for t in np.linspace(1.0, 0.0, grid)]


def prefetch_conditions(em, prompts: Sequence, scorer, generations, attributes: Sequence[str],
                        pareto: Sequence[str] | None = None, grid: int = 5, pareto_prompts: int | None = None) -> None:
    """Generate what :func:`evaluate_steerability` (on ``prompts``) and :func:`evaluate_pareto` (on the first
    ``pareto_prompts`` of them; None: all) will read, for a one-model contestant (plural / ACM), in batches that
    mix the conditions (:meth:`cmpo.eval.generation.GenerationCache.prefetch`)."""
    m = em.models.get(None)
    if m is None or m.kind not in ("plural", "steerlm"):
        return
    conds = [em.for_attribute(a)[1] for a in attributes if em.covers(a) and scorer.supports(a)]
    if pareto and (pareto_prompts is None or pareto_prompts >= len(prompts)):
        conds += [em.for_weights(pareto, w)[1] for w in pareto_weights(grid)]
        pareto = None
    generations.prefetch(m, prompts, conds)
    if pareto:  # the sweep's mixed λs on its prefix (its one-hot endpoints are stored already)
        generations.prefetch(m, prompts[:pareto_prompts], [em.for_weights(pareto, w)[1] for w in pareto_weights(grid)])


def evaluate_pareto(em, prompts: Sequence, scorer, generations, pair: Sequence[str], grid: int = 5,
                    reference=None, ref_point: Sequence[float] = (0.0, 0.0)) -> dict:
    """Sweep λ = (t, 1 − t) over ``grid`` values of t in [0, 1] for ``pair = (a, b)``; per-attribute models
    (separate DPO) contribute their two endpoints."""
    a, b = pair
    for x in pair:
        if not scorer.supports(x):
            raise ValueError(f"the {getattr(scorer, 'name', 'scorer')} scorer does not rate {x!r}")
    points = []
    if em.kind in ("plural", "steerlm"):
        for t, u in pareto_weights(grid):
            model, cond = em.for_weights([a, b], [t, u])
            texts, fin = generations.get(model, prompts, cond)
            points.append({"t": float(t), "condition": cond.describe(),
                           "scores": [float(scorer.score(prompts, texts, x, finished=fin).mean()) for x in pair]})
    else:
        for t, x in ((1.0, a), (0.0, b)):
            if not em.covers(x):
                raise ValueError(f"model {em.name!r} has no model for attribute {x!r}")
            model, cond = em.for_attribute(x)
            texts, fin = generations.get(model, prompts, cond)
            points.append({"t": t, "condition": f"{x} model",
                           "scores": [float(scorer.score(prompts, texts, y, finished=fin).mean()) for y in pair]})
    model0, _ = em.for_attribute(a)
    ref = resolve_reference(model0, reference)
    ref_texts, ref_fin = generations.get(ref, prompts, Condition())
    ref_scores = [float(scorer.score(prompts, ref_texts, y, finished=ref_fin).mean()) for y in pair]
    xy = [p["scores"] for p in points]
    return {"attributes": [a, b], "points": points, "front": pareto_front(xy),
            "hypervolume": hypervolume_2d(xy, ref_point), "hypervolume_ref_point": list(ref_point),
            "reference_scores": ref_scores, "n_prompts": len(prompts)}
