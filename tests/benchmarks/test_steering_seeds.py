"""benchmarks/steering_seeds.py: per-run summary and the seed aggregate, on hand-made demo results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("steering_seeds", REPO / "benchmarks" / "steering_seeds.py")
seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeds)


def _pareto(points):
    return {"points": [{"t": t, "scores": s} for t, s in points]}


def test_mixed_between_endpoints():
    inside = _pareto([(1.0, [4.0, 0.0]), (0.5, [3.7, 0.05]), (0.0, [1.3, 0.4])])
    outside = _pareto([(1.0, [4.0, 0.0]), (0.5, [4.2, 0.05]), (0.0, [1.3, 0.4])])
    assert seeds.mixed_between_endpoints(inside) is True
    assert seeds.mixed_between_endpoints(outside) is False
    assert seeds.mixed_between_endpoints(_pareto([(1.0, [4.0, 0.0]), (0.0, [1.3, 0.4])])) is None


def _write_run(path: Path, seed: int, diag: float, off: float) -> Path:
    (path / "eval").mkdir(parents=True)
    eff = [[diag, off], [off, diag]]
    steer = {"attributes": ["a", "b"], "effect": eff, "ci95_low": [[diag - 1, 0], [0, diag - 1]],
             "diagonal_ci_excludes_zero": [diag > 1, diag > 1], "diagonal_beats_row": [diag > off, diag > off],
             "off_diagonal_mean": off, "guards": {}}
    res = {"settings": {"seed": seed}, "steerability": {"cmpo": steer},
           "pareto": {"cmpo": _pareto([(1.0, [2.0, 0.0]), (0.5, [1.0, 1.0]), (0.0, [0.0, 2.0])])}}
    (path / "eval" / "results.json").write_text(json.dumps(res))
    (path / "state.json").write_text(json.dumps({"stages": {"train": {"seconds": 10.0 * (seed + 1)}}}))
    return path


def test_aggregate_over_seeds(tmp_path):
    runs = [seeds.run_summary("x", _write_run(tmp_path / f"s{s}", s, d, 0.5))
            for s, d in enumerate([2.0, 3.0, 4.0])]
    assert runs[0]["steers"] == [True, True] and runs[0]["max_off_diagonal"] == [0.5, 0.5]
    g = seeds.aggregate("x", runs)
    mean, half = g["diagonal"][0]
    # mean 3, sample sd 1, t(2) = 4.303: half-width 4.303 / √3
    assert mean == pytest.approx(3.0) and half == pytest.approx(4.303 / 3 ** 0.5)
    assert g["steers"] == [3, 3] and g["pareto_mixed_between_endpoints"] == 3
    assert g["train_seconds"][0] == pytest.approx(20.0)
    table = seeds.markdown([g])
    assert "| x | 0, 1, 2 | +3.00 ± 2.48 (+0.50 ± 0.00)" in table and "| 3/3 | 20 |" in table


def test_compressible_share_flags_loops_not_prose(tmp_path):
    prose = ("Gravity is the force by which a planet or other body draws objects toward its center. It keeps "
             "the Moon in orbit and makes apples fall, and Einstein described it as curved spacetime.")
    rows = [{"condition": "λ=(1, 0)", "response": prose}, {"condition": "λ=(1, 0)", "response": "1." * 60},
            {"condition": "λ=(0, 1)", "response": "Dear Sarah,\n\nDear Emily,\n\n" * 8},
            {"condition": "reference", "response": prose}, {"condition": "λ=(0.5, 0.5)", "response": "1." * 60}]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "generations.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert seeds.compressible_share(tmp_path, ["a", "b"]) == [0.5, 1.0, 0.0]
    assert seeds.compressible_share(tmp_path / "none", ["a", "b"]) == [None, None, None]
