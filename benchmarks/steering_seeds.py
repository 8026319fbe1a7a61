"""Aggregate finished `cmpo demo` runs (one per seed and setting) into the steerability table.

    python benchmarks/steering_seeds.py --run default=runs/demo-s0 --run default=runs/demo-s1 \
        --run default=runs/demo-s2 --run ipo=runs/demo-ipo-s0 [--markdown]

Each ``--run LABEL=DIR`` names a demo output directory (its ``eval/results.json`` and ``state.json``). Prints one
JSON line per run and one per label: per-attribute diagonal effect (mean over seeds, and a 95 % t-interval over
seeds when there are ≥ 2), the largest off-diagonal entry of each row, how many seeds steer each attribute
(diagonal CI above 0 and above its row), conditioned preference accuracy, the quality guards (share finished,
reference-model perplexity of the outputs, degenerate share), whether every mixed-λ point of the Pareto sweep
lies between its one-hot endpoints, and wall times. ``--markdown`` adds the table docs/steerability.md uses.

``compressible`` is a loop measure independent of the degenerate guard (which on-policy negatives train
against): the share of a condition's outputs whose zlib-compressed size is under 30 % of their UTF-8 size
(prose compresses to ≈ 50–60 %; `1.1.1.1…` or a repeated greeting to ≈ 15–25 %), read from eval/generations.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import zlib
from pathlib import Path

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _ppl(guard: dict) -> float | None:
    """Median reference perplexity of a condition's outputs (the mean for runs that predate the median)."""
    return guard.get("reference_perplexity_median", guard.get("reference_perplexity"))


def mixed_between_endpoints(pareto: dict) -> bool | None:
    """Whether every mixed-λ point of the sweep lies in the box its two one-hot endpoints span (per score)."""
    points = pareto.get("points") or []
    ends = [p["scores"] for p in points if p["t"] in (0.0, 1.0)]
    inner = [p["scores"] for p in points if p["t"] not in (0.0, 1.0)]
    if len(ends) != 2 or not inner:
        return None
    lo, hi = [min(a, b) for a, b in zip(*ends)], [max(a, b) for a, b in zip(*ends)]
    return all(lo[i] - 1e-9 <= s[i] <= hi[i] + 1e-9 for s in inner for i in range(len(s)))


def compressible_share(path: Path, attributes: list[str]) -> list[float | None]:
    """Per one-hot condition (then the reference): share of outputs that zlib compresses below 30 %."""
    gen = path / "eval" / "generations.jsonl"
    if not gen.exists():
        return [None] * (len(attributes) + 1)
    rows = [json.loads(line) for line in gen.read_text().splitlines() if line.strip()]
    k = len(attributes)
    names = [f"λ=({', '.join('1' if j == i else '0' for j in range(k))})" for i in range(k)] + ["reference"]

    def small(text: str) -> bool:
        raw = text.encode()
        return bool(raw) and len(zlib.compress(raw, 9)) < 0.3 * len(raw)

    out = []
    for name in names:
        texts = [r["response"] for r in rows if r.get("condition") == name]
        out.append(sum(map(small, texts)) / len(texts) if texts else None)
    return out


def run_summary(label: str, path: Path) -> dict:
    res = json.loads((path / "eval" / "results.json").read_text())
    state = json.loads((path / "state.json").read_text())
    steer = res["steerability"]["cmpo"]
    attrs = steer["attributes"]
    eff = steer["effect"]
    k = len(attrs)
    guards = steer.get("guards", {})
    acc = res.get("accuracy", {}).get("cmpo", {})
    return {
        "label": label, "dir": str(path), "seed": res["settings"].get("seed"), "attributes": attrs,
        "diagonal": [eff[i][i] for i in range(k)],
        "diagonal_ci95_low": [steer["ci95_low"][i][i] for i in range(k)],
        "max_off_diagonal": [max(eff[i][j] for j in range(k) if j != i) for i in range(k)],
        "steers": [bool(a and b) for a, b in zip(steer["diagonal_ci_excludes_zero"], steer["diagonal_beats_row"])],
        "off_diagonal_mean": steer["off_diagonal_mean"],
        "accuracy": [acc.get(a, {}).get("policy", {}).get("accuracy") for a in attrs],
        "reward_accuracy": [acc.get(a, {}).get("implicit_reward", {}).get("accuracy") for a in attrs],
        "finished": [guards.get(a, {}).get("finished") for a in attrs] + [guards.get("reference", {}).get("finished")],
        "perplexity": [_ppl(guards.get(a, {})) for a in attrs] + [_ppl(guards.get("reference", {}))],
        "degenerate": [guards.get(a, {}).get("degenerate") for a in attrs] + [guards.get("reference", {}).get("degenerate")],
        "compressible": compressible_share(path, attrs),
        "pareto_hypervolume": res.get("pareto", {}).get("cmpo", {}).get("hypervolume"),
        "pareto_mixed_between_endpoints": mixed_between_endpoints(res.get("pareto", {}).get("cmpo", {})),
        "stage_seconds": {s: r.get("seconds") for s, r in state["stages"].items()},
    }


def mean_ci(xs: list[float]) -> tuple[float, float | None]:
    """-> (mean, half-width of the 95 % t-interval over seeds; None for one seed)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    return m, T975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def aggregate(label: str, runs: list[dict]) -> dict:
    k = len(runs[0]["attributes"])
    col = lambda key, i: [r[key][i] for r in runs if r[key][i] is not None]  # noqa: E731
    return {
        "label": label, "seeds": [r["seed"] for r in runs], "attributes": runs[0]["attributes"],
        "diagonal": [mean_ci(col("diagonal", i)) for i in range(k)],
        "max_off_diagonal": [mean_ci(col("max_off_diagonal", i)) for i in range(k)],
        "steers": [sum(r["steers"][i] for r in runs) for i in range(k)],
        "off_diagonal_mean": mean_ci([r["off_diagonal_mean"] for r in runs]),
        "accuracy": [mean_ci(col("accuracy", i)) if col("accuracy", i) else None for i in range(k)],
        "reward_accuracy": [mean_ci(col("reward_accuracy", i)) if col("reward_accuracy", i) else None
                            for i in range(k)],
        "finished": [mean_ci(col("finished", i)) if col("finished", i) else None for i in range(k + 1)],
        "perplexity": [mean_ci(col("perplexity", i)) if col("perplexity", i) else None for i in range(k + 1)],
        "degenerate": [mean_ci(col("degenerate", i)) if col("degenerate", i) else None for i in range(k + 1)],
        "compressible": [mean_ci(col("compressible", i)) if col("compressible", i) else None for i in range(k + 1)],
        "pareto_mixed_between_endpoints": sum(bool(r["pareto_mixed_between_endpoints"]) for r in runs),
        "train_seconds": mean_ci([r["stage_seconds"].get("train") or 0.0 for r in runs]),
    }


def _fmt(mc, digits=2) -> str:
    if mc is None:
        return "–"
    m, h = mc
    return f"{m:+.{digits}f}" if h is None else f"{m:+.{digits}f} ± {h:.{digits}f}"


def markdown(aggs: list[dict]) -> str:
    attrs = aggs[0]["attributes"]
    head = (["setting", "seeds"] + [f"{a} diag. (max off-diag. of row)" for a in attrs]
            + ["seeds steering each", "cond. pref. acc.: likelihood / implicit reward", "finished (ref.)", "degenerate (ref.)", "ref. perplexity, median (ref.)",
               "mixed λ between endpoints", "train s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in aggs:
        n = len(g["seeds"])
        cells = [g["label"], ", ".join(str(s) for s in g["seeds"])]
        cells += [f"{_fmt(d)} ({_fmt(o)})" for d, o in zip(g["diagonal"], g["max_off_diagonal"])]
        cells.append(" / ".join(f"{s}/{n}" for s in g["steers"]))
        cells.append(" / ".join(f"{a[0]:.2f}" if a else "–" for a in g["accuracy"]) + "; "
                     + " / ".join(f"{a[0]:.2f}" if a else "–" for a in g["reward_accuracy"]))
        for key in ("finished", "degenerate"):
            vals = g[key]
            cells.append(" / ".join(f"{v[0]:.2f}" if v else "–" for v in vals[:-1])
                         + (f" ({vals[-1][0]:.2f})" if vals[-1] else ""))
        cells.append(" / ".join(f"{p[0]:.1f}" for p in g["perplexity"][:-1] if p)
                     + f" ({g['perplexity'][-1][0]:.1f})" if g["perplexity"][-1] else "")
        cells.append(f"{g['pareto_mixed_between_endpoints']}/{n}")
        cells.append(f"{g['train_seconds'][0]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="a finished demo run")
    ap.add_argument("--markdown", action="store_true", help="also print the markdown table")
    args = ap.parse_args()
    by_label: dict[str, list[dict]] = {}
    for spec in args.run:
        label, _, path = spec.partition("=")
        if not path:
            ap.error(f"--run {spec!r}: expected LABEL=DIR")
        summary = run_summary(label, Path(path))
        print(json.dumps({"run": summary}))
        by_label.setdefault(label, []).append(summary)
    aggs = [aggregate(label, runs) for label, runs in by_label.items()]
    for g in aggs:
        print(json.dumps({"setting": g}))
    if args.markdown:
        print(markdown(aggs))


if __name__ == "__main__":
    main()
