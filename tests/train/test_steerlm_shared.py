"""SteerLM APM on real rated data from ../shared/data (integration: loads SmolLM2-135M).

The helpers write small `cmpo prepare`-layout directories (meta.json + sft/ with 0–4 ``ratings``) straight from
the shared files, so these tests do not depend on ``cmpo prepare``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

# Topical-Chat USR scales -> 0..4 Likert: (lo, hi) of each score's range.
USR_SCALES = {"understandability": (0, 1), "naturalness": (1, 3), "coherence": (1, 3), "engagingness": (1, 3),
              "groundedness": (0, 1), "overall": (1, 5)}
OASST_ATTRS = ["quality", "helpfulness", "humor", "creativity", "toxicity"]


def _split(key: str, validation_fraction: float) -> str:
    # salted: the shared files are what is left after an unsalted sha256 holdout cut
    h = int(hashlib.sha256(("cmpo-steerlm:" + key).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if h < validation_fraction else "train"


def _save(root: Path, rows: dict, attributes: list[str], source: str) -> Path:
    from datasets import Dataset, DatasetDict

    root.mkdir(parents=True, exist_ok=True)
    DatasetDict({s: Dataset.from_list(r) for s, r in rows.items()}).save_to_disk(str(root / "sft"))
    (root / "meta.json").write_text(json.dumps({"attributes": attributes, "template": "chat", "source": source,
                                                "scheme": "test"}))
    return root


def topical_chat_prepared(shared: Path, root: Path, validation_fraction: float = 0.25) -> Path:
    """270 USR-rated Topical-Chat responses; prompt = the dialogue (turns alternate, last one the user's)."""
    rows = {"train": [], "validation": []}
    for _i, line in enumerate((shared / "topical_chat_usr" / "topical_chat_usr.jsonl").read_text().splitlines()):
        r = json.loads(line)
        turns = [t.strip() for t in r["source"].strip().split("\n") if t.strip()]
        msgs = [{"role": "user" if (len(turns) - 1 - j) % 2 == 0 else "assistant", "content": t}
                for j, t in enumerate(turns)]
        ratings = {a: round(4 * (r["scores"][a] - lo) / (hi - lo), 4) for a, (lo, hi) in USR_SCALES.items()}
        rows[_split(r["source"], validation_fraction)].append(
            {"prompt_id": hashlib.sha256(r["source"].encode()).hexdigest()[:12], "prompt": msgs,
             "response": r["system_output"].strip(), "ratings": json.dumps(ratings)})
    return _save(root, rows, list(USR_SCALES), "topical_chat_usr")


def oasst_prepared(shared: Path, root: Path, validation_fraction: float = 0.25) -> Path:
    """OASST1 assistant replies with their parent prompt; label values in [0, 1] scaled to 0..4."""
    msgs = [json.loads(x) for x in (shared / "oasst1" / "oasst1_en_validation.jsonl").read_text().splitlines()]
    by_id = {m["message_id"]: m for m in msgs}
    rows = {"train": [], "validation": []}
    for m in msgs:
        parent = by_id.get(m["parent_id"])
        if m["role"] != "assistant" or parent is None or parent["role"] != "prompter" or not m.get("labels"):
            continue
        labels = dict(zip(m["labels"]["name"], m["labels"]["value"]))
        ratings = {a: round(4 * labels[a], 4) for a in OASST_ATTRS if a in labels}
        if not ratings:
            continue
        rows[_split(m["message_tree_id"], validation_fraction)].append(
            {"prompt_id": parent["message_id"], "prompt": [{"role": "user", "content": parent["text"]}],
             "response": m["text"], "ratings": json.dumps(ratings)})
    return _save(root, rows, OASST_ATTRS, "oasst1")


@pytest.mark.integration
def test_apm_beats_majority_class_on_real_ratings(tmp_path, shared_data, smollm_dir):
    """Frozen SmolLM2 trunk + cached pooled features; only the heads train (a few seconds after one forward
    pass over ~220 short sequences)."""
    from cmpo.train.steerlm_apm import APMRunConfig, train_apm

    data = topical_chat_prepared(shared_data, tmp_path / "prepared")
    cfg = APMRunConfig.load(str(Path(__file__).resolve().parents[2] / "recipes" / "steerlm-apm-cpu.yaml"), [
        f"model.name={smollm_dir}", "data.max_length=64", "data.max_prompt_length=24",
        "data.max_train_samples=160", "train.num_train_epochs=40", "train.disable_tqdm=true"])
    cfg.train.output_dir = str(tmp_path / "ckpt")
    out = train_apm(cfg, data, tmp_path / "apm")
    metrics = json.loads((out / "apm_metrics.json").read_text())["validation"]
    assert set(metrics) == set(USR_SCALES)
    for m in metrics.values():
        assert m["n"] > 0 and 0 <= m["accuracy"] <= 1 and 0 <= m["majority_accuracy"] <= 1
    gains = {a: m["accuracy"] - m["majority_accuracy"] for a, m in metrics.items()}
    print(json.dumps(metrics, indent=1))
    assert max(gains.values()) > 0, gains
