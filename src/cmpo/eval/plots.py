"""Matplotlib (Agg) figures for the evaluation report. Every function writes one PNG and returns its path.

  bar_chart           per-attribute grouped bars with 95% CI whiskers: win-rates (thesis Figs 5.1–5.3),
                      preference accuracy (Figs 5.4–5.5)
  training_curves     loss / reward-accuracy curves from a Trainer's ``trainer_state.json`` (Figs A.1–A.4)
  effect_heatmap      the k×k steering effect matrix with annotated cells
  pareto_plot         mean scores along the λ = (t, 1 − t) sweep, one line per model, reference marked
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Atomic PNG write (temp file + os.replace)."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def bar_chart(values: Mapping[str, Mapping[str, tuple[float, float, float]]], path, title: str, ylabel: str,
              ylim: tuple[float, float] | None = None, hline: float | None = None) -> Path:
    """``values[model][attribute] = (value, ci_low, ci_high)`` -> grouped bars (groups = attributes)."""
    plt = _plt()
    models = list(values)
    attrs = list(dict.fromkeys(a for m in models for a in values[m]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(attrs) * max(1, len(models)) * 0.6 + 2), 3.6))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(attrs))
    for k, m in enumerate(models):
        v = np.array([values[m].get(a, (np.nan, np.nan, np.nan)) for a in attrs], dtype=float).reshape(-1, 3)
        err = np.abs(np.stack([v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]]))
        ax.bar(x + (k - (len(models) - 1) / 2) * width, v[:, 0], width, yerr=np.nan_to_num(err), capsize=3,
               label=m)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, attrs, rotation=20 if len(attrs) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    return _save(fig, path)


def find_trainer_state(run_dir: str | os.PathLike) -> Path:
    """``DIR/trainer_state.json``, else the newest ``checkpoint-*/trainer_state.json`` in DIR or DIR.checkpoints."""
    run_dir = Path(run_dir)
    for base in (run_dir, Path(str(run_dir) + ".checkpoints")):
        if (base / "trainer_state.json").exists():
            return base / "trainer_state.json"
        ckpts = sorted(base.glob("checkpoint-*/trainer_state.json"),
                       key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1)
        if ckpts:
            return ckpts[-1]
    raise FileNotFoundError(f"no trainer_state.json in {run_dir} or its checkpoint-*/ folders "
                            f"(nor in {run_dir}.checkpoints)")


def load_log_history(run_dir) -> list[dict]:
    path = find_trainer_state(run_dir)
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    hist = state.get("log_history")
    if not isinstance(hist, list):
        raise ValueError(f"{path}: field 'log_history' missing or not a list")  # noqa: TRY004 - bad input file, not a caller bug
    return hist


def ema(values: Sequence[float], smoothing: float) -> np.ndarray:
    """TensorBoard-style smoothing: y_t = s·y_{t−1} + (1 − s)·x_t (the thesis plots use s = 0.1)."""
    out, prev = [], None
    for x in values:
        prev = x if prev is None else smoothing * prev + (1 - smoothing) * x
        out.append(prev)
    return np.array(out)


CURVES = {"loss": ("loss", "eval_loss"), "reward accuracy": ("rewards/accuracies", "eval_rewards/accuracies")}


def training_curves(runs: Mapping[str, list[dict]], path, smoothing: float = 0.1) -> tuple[Path, dict]:
    """``runs[name] = log_history`` -> loss and reward-accuracy panels (train solid, validation dashed).

    Returns (path, {run: {key: number of points}}); keys a run never logged are skipped.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    counts: dict[str, dict[str, int]] = {}
    for ax, (label, keys) in zip(axes, CURVES.items()):
        for name, hist in runs.items():
            for key, style in zip(keys, ("-", "--")):
                pts = [(h["step"], h[key]) for h in hist if key in h and "step" in h]
                if not pts:
                    continue
                steps, vals = zip(*pts)
                ax.plot(steps, ema(vals, smoothing), style, label=f"{name} {'val' if key.startswith('eval') else 'train'}")
                counts.setdefault(name, {})[key] = len(pts)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{label} (smoothing {smoothing:g})")
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, path), counts


def effect_heatmap(effect: Sequence[Sequence[float]], attributes: Sequence[str], path, title: str,
                   ci_low=None, ci_high=None) -> Path:
    """Rows: condition ("be <attribute>"); columns: scored attribute; cells annotated with value [CI]."""
    plt = _plt()
    e = np.asarray(effect, dtype=float)
    k = len(attributes)
    fig, ax = plt.subplots(figsize=(1.6 * k + 2.5, 1.2 * k + 1.5))
    lim = max(1e-9, float(np.nanmax(np.abs(e))))
    im = ax.imshow(e, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(k):
        for j in range(k):
            text = f"{e[i, j]:+.2f}"
            if ci_low is not None and ci_high is not None:
                text += f"\n[{ci_low[i][j]:+.2f}, {ci_high[i][j]:+.2f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(k), attributes, rotation=20)
    ax.set_yticks(range(k), [f"be {a}" for a in attributes])
    ax.set_xlabel("scored attribute (change vs reference)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def pareto_plot(curves: Mapping[str, dict], path, title: str) -> Path:
    """``curves[model]`` = an ``evaluate_pareto`` result; one line per model, front points ringed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    attrs = None
    for name, res in curves.items():
        attrs = res["attributes"]
        xy = np.array([p["scores"] for p in res["points"]], dtype=float)
        line = ax.plot(xy[:, 0], xy[:, 1], "o-", label=f"{name} (HV {res['hypervolume']:.2f})")[0]
        for p, (x, y) in zip(res["points"], xy):
            ax.annotate(f"t={p['t']:.2g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = xy[res["front"]]
        ax.scatter(front[:, 0], front[:, 1], s=90, facecolors="none", edgecolors=line.get_color())
        rx, ry = res["reference_scores"]
        ax.scatter([rx], [ry], marker="x", color=line.get_color(), s=60)
    if attrs:
        ax.set_xlabel(f"mean {attrs[0]} score")
        ax.set_ylabel(f"mean {attrs[1]} score")
    ax.set_title(title + "  (x = reference)")
    ax.legend(fontsize=7)
    return _save(fig, path)
