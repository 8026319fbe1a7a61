"""`cmpo demo --quick` end to end on the real default model (the README's main job, smaller)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


def _numbers(x, path=""):
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return
    if isinstance(x, (int, float)):
        yield path, float(x)
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}[{i}]")


@pytest.mark.integration
def test_quick_demo_writes_a_complete_report_and_resumes(tmp_path, smollm_dir):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "cmpo.cli", "demo", "--quick", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("candidates.jsonl", "feedback.jsonl", "data/meta.json", "data/stats.json",
                 "model/cmpo_config.json", "model/plural.safetensors", "metrics.json", "report.html"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    steer = metrics["steerability"]["cmpo"]
    k = len(steer["attributes"])
    assert k == 3 and len(steer["effect"]) == k and all(len(r) == k for r in steer["effect"])
    # the effect matrix rates the 6 held-out + 6 evaluation-only prompts; the Pareto sweep the held-out ones
    assert steer["n_prompts"] == 12 and metrics["pareto"]["cmpo"]["n_prompts"] == 6
    bad = [(p, v) for p, v in _numbers(metrics) if not math.isfinite(v) and "off_diagonal" not in p]
    assert not bad, bad[:10]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "steer" in html.lower()
    assert "Can the model be steered?" in res.stderr
    # every stage finished; a rerun resumes (nothing is recomputed) and reports the same numbers
    state = json.loads((out / "state.json").read_text())
    assert set(state["stages"]) == {"candidates", "feedback", "prepare", "train", "evaluate", "report"}
    # one round of on-policy negatives searched the training prompts (≤ 20) + 8 unlabelled ones under each one-hot λ
    (found,) = state["stages"]["train"]["negatives"]
    searched = {c["prompts"] for c in found.values()}
    assert set(found) == set(steer["attributes"]) and len(searched) == 1 and 8 < searched.pop() <= 28
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done earlier, reusing") == 5
    assert json.loads((out / "metrics.json").read_text())["steerability"] == metrics["steerability"]
