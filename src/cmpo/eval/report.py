"""``metrics.json`` + PNG plots + a self-contained ``report.html`` (plots embedded as base64 data URIs).

``results`` layout (every section optional, every number next to its sample size ``n``):
  settings        the run's options (models, data, seed, judge, generation settings…)
  models          name -> {kind, attributes, paths}
  accuracy        model -> attribute -> {condition, policy: {accuracy, n, ci95…}, implicit_reward: {…}}
  correlation     model -> attribute -> {spearman, kendall, p-values, n, score}
  winrate         model -> attribute -> {win_rate, wins, ties, losses, n, ci95, invalid, mean_words_*…}
  steerability    model -> {attributes, effect, ci95_low/high, diagonal_mean, …, guards}
  pareto          model -> {attributes, points, hypervolume, …}
  training        run -> log_history (plotted; only point counts go to metrics.json)
  judge           the judge's settings and token usage
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from pathlib import Path

from cmpo.eval import plots

PLOT_DIR = "plots"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _clean(x):
    """JSON-safe: NaN/inf -> None, numpy scalars/arrays -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "tolist"):
        return _clean(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def make_plots(results: dict, out_dir: Path) -> dict[str, Path]:
    """Draw every plot the results allow -> {plot name: path}."""
    pdir = out_dir / PLOT_DIR
    made: dict[str, Path] = {}
    if results.get("winrate"):
        vals = {m: {a: (r["win_rate"], *r["ci95"]) for a, r in per.items()} for m, per in results["winrate"].items()}
        made["winrate"] = plots.bar_chart(vals, pdir / "winrate.png", "Judge win-rate vs reference (ties = 0)",
                                          "win-rate", ylim=(-1.05, 1.05), hline=0.0)
    if results.get("accuracy"):
        vals = {m: {a: (r["policy"]["accuracy"], *r["policy"]["ci95"]) for a, r in per.items()}
                for m, per in results["accuracy"].items()}
        made["accuracy"] = plots.bar_chart(vals, pdir / "accuracy.png", "Conditioned preference accuracy (eq. 5.1)",
                                           "accuracy", ylim=(0, 1.05), hline=0.5)
        imp = {m: {a: (r["implicit_reward"]["accuracy"], *r["implicit_reward"]["ci95"])
                   for a, r in per.items() if "implicit_reward" in r} for m, per in results["accuracy"].items()}
        imp = {m: v for m, v in imp.items() if v}
        if imp:
            made["reward_accuracy"] = plots.bar_chart(imp, pdir / "reward_accuracy.png",
                                                      "Implicit-reward accuracy vs reference", "accuracy",
                                                      ylim=(0, 1.05), hline=0.5)
    if results.get("correlation"):
        vals = {m: {a: (r["spearman"] if r["spearman"] is not None else math.nan,) * 3 for a, r in per.items()}
                for m, per in results["correlation"].items()}
        made["correlation"] = plots.bar_chart(vals, pdir / "correlation.png",
                                              "Spearman ρ: conditioned score vs human rating", "Spearman ρ",
                                              ylim=(-1.05, 1.05), hline=0.0)
    for m, res in (results.get("steerability") or {}).items():
        made[f"heatmap_{m}"] = plots.effect_heatmap(res["effect"], res["attributes"], pdir / f"heatmap_{_safe(m)}.png",
                                                    f"{m}: steering effect ({res['scorer']} scores)",
                                                    res["ci95_low"], res["ci95_high"])
    if results.get("pareto"):
        pair = next(iter(results["pareto"].values()))["attributes"]
        made["pareto"] = plots.pareto_plot(results["pareto"], pdir / "pareto.png", f"λ sweep {pair[0]} ↔ {pair[1]}")
    if results.get("training"):
        made["training"], _ = plots.training_curves(results["training"], pdir / "training.png")
    return made


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) or x is None for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return html.escape(str(v))


def _flatten(prefix: str, x, out: list) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "examples":
                continue
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(x, list) and x and any(isinstance(v, (dict, list)) for v in x):
        for i, v in enumerate(x):
            _flatten(f"{prefix}[{i}]", v, out)
    else:
        out.append((prefix, x))


def metric_rows(metrics: dict) -> list[tuple[str, object]]:
    """Every leaf of the metric sections as (dotted.path, value) — what the full table of report.html shows."""
    rows: list = []
    for section in ("accuracy", "correlation", "winrate", "steerability", "pareto", "training", "judge"):
        if metrics.get(section):
            _flatten(section, metrics[section], rows)
    return rows


def _table(headers, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(metrics: dict) -> str:
    parts = []
    if metrics.get("winrate"):
        rows = [[html.escape(m), html.escape(a), _fmt(r["win_rate"]), _fmt(r["ci95"]),
                 f"{r['wins']}/{r['ties']}/{r['losses']}", str(r["n"]), str(r["invalid"]),
                 f"{_fmt(r['mean_words_model'])} / {_fmt(r['mean_words_reference'])}"]
                for m, per in metrics["winrate"].items() for a, r in per.items()]
        parts.append("<h2>Judge win-rate</h2>" + _table(
            ["model", "attribute", "win-rate", "95% CI", "W/T/L", "n", "invalid", "words model / ref"], rows))
    if metrics.get("accuracy"):
        rows = [[html.escape(m), html.escape(a), html.escape(r["condition"]), _fmt(r["policy"]["accuracy"]),
                 _fmt(r["policy"]["ci95"]), str(r["policy"]["n"]),
                 _fmt(r.get("implicit_reward", {}).get("accuracy")), _fmt(r.get("implicit_reward", {}).get("ci95"))]
                for m, per in metrics["accuracy"].items() for a, r in per.items()]
        parts.append("<h2>Conditioned preference accuracy</h2>" + _table(
            ["model", "attribute", "condition", "accuracy", "95% CI", "n", "reward acc.", "95% CI"], rows))
    if metrics.get("correlation"):
        rows = [[html.escape(m), html.escape(a), _fmt(r["spearman"]), _fmt(r["spearman_p"]), _fmt(r["kendall"]),
                 _fmt(r["kendall_p"]), str(r["n"])] for m, per in metrics["correlation"].items() for a, r in per.items()]
        parts.append("<h2>Rank correlation with human ratings</h2>" + _table(
            ["model", "attribute", "Spearman ρ", "p", "Kendall τ", "p", "n"], rows))
    for m, r in (metrics.get("steerability") or {}).items():
        rows = [[html.escape(a), _fmt(r["effect"][i][i]), "yes" if r["diagonal_beats_row"][i] else "no",
                 "yes" if r["diagonal_beats_column"][i] else "no",
                 _fmt(r["guards"][a]["finished"]), _fmt(r["guards"][a].get("reference_perplexity"))]
                for i, a in enumerate(r["attributes"])]
        parts.append(f"<h2>Steerability: {html.escape(m)}</h2><p>diagonal mean {_fmt(r['diagonal_mean'])}, "
                     f"off-diagonal mean {_fmt(r['off_diagonal_mean'])}, {r['n_prompts']} prompts; reference "
                     f"finished {_fmt(r['guards']['reference']['finished'])}</p>" + _table(
                         ["condition", "own effect", "beats row", "beats column", "finished", "ref. perplexity"], rows))
    if metrics.get("pareto"):
        rows = [[html.escape(m), _fmt(r["hypervolume"]), _fmt(r["hypervolume_ref_point"]), str(r["n_prompts"])]
                for m, r in metrics["pareto"].items()]
        parts.append("<h2>Pareto sweep</h2>" + _table(["model", "hypervolume", "ref. point", "n prompts"], rows))
    return "\n".join(parts)


def _examples(metrics: dict) -> str:
    blocks = []
    for m, per in (metrics.get("winrate") or {}).items():
        for a, r in per.items():
            for ex in r.get("examples", [])[:1]:
                blocks.append(f"<details><summary>{html.escape(m)} · {html.escape(a)} (outcome {ex['outcome']})"
                              f"</summary><p><b>Prompt</b></p><pre>{html.escape(ex['prompt'])}</pre><p><b>Model</b>"
                              f"</p><pre>{html.escape(ex['model'])}</pre><p><b>Reference</b></p>"
                              f"<pre>{html.escape(ex['reference'])}</pre></details>")
    return ("<h2>Examples</h2>" + "".join(blocks)) if blocks else ""


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
       "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
       "font-size:13px}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
       "pre{white-space:pre-wrap;background:#f8f8f8;padding:.5em}")


def render_html(metrics: dict, plot_paths: dict[str, Path]) -> str:
    settings = _table(["setting", "value"], [[html.escape(k), html.escape(json.dumps(v, ensure_ascii=False))]
                                             for k, v in (metrics.get("settings") or {}).items()])
    models = _table(["model", "kind", "attributes", "paths"], [
        [html.escape(n), html.escape(str(m.get("kind"))), html.escape(", ".join(m.get("attributes") or [])),
         html.escape(", ".join(m.get("paths") or []))] for n, m in (metrics.get("models") or {}).items()])
    figs = []
    for name, path in plot_paths.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        figs.append(f'<figure data-plot="{html.escape(name)}"><img alt="{html.escape(Path(path).name)}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{html.escape(Path(path).name)}</figcaption>'
                    "</figure>")
    full = _table(["metric", "value"], [[html.escape(k), _fmt(v)] for k, v in metric_rows(metrics)])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cmpo evaluation</title><style>{CSS}</style>"
            f"</head><body><h1>cmpo evaluation report</h1><h2>Settings</h2>{settings}<h2>Models</h2>{models}"
            f"{_summary(metrics)}<h2>Plots</h2>{''.join(figs)}{_examples(metrics)}"
            f"<h2>All numbers</h2>{full}</body></html>")


def write_report(results: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``metrics.json``, ``plots/*.png`` and ``report.html`` into ``out_dir`` -> {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_paths = make_plots(results, out)
    metrics = dict(results)
    if "training" in metrics:  # raw histories are plotted; metrics.json keeps the point counts
        metrics["training"] = {run: {"points": len(h), "keys": sorted({k for row in h for k in row})}
                               for run, h in results["training"].items()}
    metrics["plots"] = {k: str(Path(v).relative_to(out)) for k, v in plot_paths.items()}
    metrics = _clean(metrics)
    _atomic_write(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False))
    _atomic_write(out / "report.html", render_html(metrics, plot_paths))
    return {"metrics": out / "metrics.json", "report": out / "report.html", **plot_paths}
