"""Each benchmark script runs at tiny size and prints parseable JSON lines (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def _run(args: list[str], env_extra: dict | None = None, timeout: int = 120) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               **(env_extra or {}))
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"')]
    assert records, f"no JSON lines in stdout:\n{proc.stdout[-2000:]}"
    return records


def _py(script: str, *args: str) -> list[dict]:
    return _run([sys.executable, str(BENCH / script), *args])


def test_bench_train_tiny():
    recs = _py("bench_train.py", "--model", "tiny-random", "--threads", "1", "--batch", "2", "--prompt-len", "6",
               "--response-len", "6", "--warmup", "1", "--steps", "1", "--rounds", "1",
               "--configs", "dpo,trl,cmpo-lowrank-k2,cmpo-full-k2")
    summaries = {r["config"]: r for r in recs if r.get("kind") == "summary"}
    assert set(summaries) == {"dpo", "trl", "cmpo-lowrank-k2", "cmpo-full-k2"}
    assert all(s["pairs_per_s"] > 0 and s["mfu"] > 0 for s in summaries.values())
    rounds = {r["config"]: r for r in recs if r.get("kind") == "round"}
    # trainable parameter counts are exact: LoRA r=16 on q/k/v/o of the 2-layer, hidden-64 tiny model
    # q,o: 16·(64+64); k,v (2 KV heads × 16 dims = 32 outputs): 16·(64+32)
    lora = 2 * (2 * 16 * (64 + 64) + 2 * 16 * (64 + 32))
    assert rounds["dpo"]["trainable_params"] == lora == rounds["trl"]["trainable_params"]
    vocab = 484
    # low-rank heads (k=2, r=16): A [2, 16, 64] + B [V, 2, 16]
    assert rounds["cmpo-lowrank-k2"]["trainable_params"] == lora + 2 * 16 * 64 + vocab * 2 * 16
    assert rounds["cmpo-full-k2"]["trainable_params"] == lora + 2 * vocab * 64
    ratios = next(r for r in recs if r.get("kind") == "ratios")
    assert "cmpo-lowrank-k2/dpo pairs_per_s" in ratios and "cmpo-lowrank-k2/trl pairs_per_s" in ratios


def test_bench_decode_tiny():
    recs = _py("bench_decode.py", "--model", "tiny-random", "--threads", "1", "--k", "3", "--batch-sizes", "1,3",
               "--prompt-len", "5", "--new-tokens", "3", "--reps", "1")
    summ = [r for r in recs if r.get("kind") == "summary"]
    assert {(r["batch"], r["variant"]) for r in summ} == {(b, v) for b in (1, 3) for v in
                                                          ("base", "naive", "fused", "mixed", "fused_lora")}
    assert all(r["tokens_per_s"] > 0 for r in summ)


def test_bench_vs_separate_tiny():
    recs = _py("bench_vs_separate.py", "--model", "tiny-random", "--threads", "1", "--k", "2", "--prompts", "8",
               "--steps", "1", "--max-length", "256")
    runs = [r for r in recs if r.get("kind") == "run"]
    assert [r["run"] for r in runs] == ["cmpo", "dpo", "dpo"]
    s = next(r for r in recs if r.get("kind") == "summary")
    assert s["goal_ratio"] == pytest.approx(0.6) and s["ratio_epoch"] > 0


def test_bench_prepare_tiny():
    recs = _py("bench_prepare.py", "--prompts", "50", "--tokenize-prompts", "10", "--model", "tiny-random")
    conv = next(r for r in recs if r["stage"] == "conversion")
    # at most 4·3 = 12 ordered pairs per prompt (pairs tied on every attribute are dropped)
    assert 0 < conv["ordered_pairs"] <= 50 * 12 and conv["conditioned_rows"] > 0
    assert next(r for r in recs if r["stage"] == "tokenization")["responses"] == 40


def test_gpu_script_tiny_on_cpu_without_trl(tmp_path):
    """gpu.sh at tiny size with trl made unimportable (the GPU image has no trl). ``datasets`` cannot be blocked
    the same way: transformers imports it whenever its package metadata is installed, as it is here."""
    block = tmp_path / "block"
    for name in ("trl",):
        (block / name).mkdir(parents=True)
        (block / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked (GPU image)')\n")
    recs = _run(["bash", str(BENCH / "gpu.sh")],
                {"BENCH_TINY": "1", "PYTHON": sys.executable, "OUT": str(tmp_path), "PYTHONPATH": str(block)})
    kinds = {(r["bench"], r.get("kind")) for r in recs}
    assert ("train", "ratios") in kinds and ("decode", "ratios") in kinds
    assert (tmp_path / "gpu-results.jsonl").read_text().count("\n") == len(recs)


def test_ablate_parts_tiny(tmp_path, tiny_model_dir):
    from tests.models.test_plural import make_plural, perturb
    from tests.train.conftest import make_prepared

    attrs = ["conciseness", "structure", "enthusiasm"]
    make_prepared(tmp_path / "run" / "data", n_pairs=8, attributes=attrs)
    plural = make_plural(tiny_model_dir, "lowrank", "plural", attrs=attrs)
    perturb(plural)
    plural.save(tmp_path / "run" / "model")
    recs = _py("ablate_parts.py", "--run", str(tmp_path / "run"), "--attributes", "conciseness,enthusiasm",
               "--max-new-tokens", "6", "--threads", "1")
    assert [(r["attribute"], r["variant"]) for r in recs] == [
        (a, v) for a in ("conciseness", "enthusiasm")
        for v in ("trained", "head ablated", "adapters ablated", "both ablated (reference)")]
    assert all(r["n"] == 2 and set(r["scores"]) == set(attrs) for r in recs)
    # with both parts ablated every condition is the reference model: identical greedy outputs
    ref = [r for r in recs if r["variant"].startswith("both")]
    assert ref[0]["outputs_sha1"] == ref[1]["outputs_sha1"] and ref[0]["scores"] == ref[1]["scores"]
    trained = [r for r in recs if r["variant"] == "trained"]
    assert all(t["outputs_sha1"] != ref[0]["outputs_sha1"] for t in trained)
