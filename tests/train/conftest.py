"""Fixtures for the training tests: small prepared-data directories in the `cmpo prepare` layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

ATTRS = ["helpfulness", "humor"]
_WORDS = "the quick brown fox jumps over lazy dog bread steps safety first item second great day".split()


def make_prepared(root: Path, n_pairs: int = 16, attributes=ATTRS, seed: int = 0) -> Path:
    """Write meta.json + sft/pairs/conditioned DatasetDicts with deterministic synthetic text."""
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    k = len(attributes)

    def text(n):
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    sft, pairs, cond = [], [], []
    for i in range(n_pairs):
        prompt = [{"role": "user", "content": f"Question {i}: {text(4)}?"}]
        good, bad = text(rng.randint(2, 6)) + "!", text(rng.randint(3, 8))
        ratings = {a: rng.random() for a in attributes}
        sft.append({"prompt_id": f"p{i}", "prompt": prompt, "response": good, "ratings": json.dumps(ratings)})
        attr = attributes[i % k]
        pairs.append({"prompt_id": f"p{i}", "prompt": prompt, "chosen": good, "rejected": bad,
                      "attribute": attr, "margin": 1.0})
        w = [0.0] * k
        w[i % k] = 1.0
        if i % 3 == 2 and k > 1:
            w = [1.0 / k] * k
        cond.append({"prompt_id": f"p{i}", "prompt": prompt, "chosen": good, "rejected": bad, "weights": w,
                     "condition": [a for a, x in zip(attributes, w) if x > 0], "margin": 1.0})
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("sft", sft), ("pairs", pairs), ("conditioned", cond)):
        cut = max(1, len(rows) // 4)
        DatasetDict({"train": Dataset.from_list(rows[cut:]), "validation": Dataset.from_list(rows[:cut])}
                    ).save_to_disk(str(root / name))
    (root / "meta.json").write_text(json.dumps({"attributes": list(attributes), "scheme": "test",
                                                "template": "chat", "source": "synthetic", "seed": seed}))
    return root


@pytest.fixture()
def prepared(tmp_path) -> Path:
    return make_prepared(tmp_path / "prepared")
