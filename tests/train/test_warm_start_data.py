"""Plural SFT warm start data: per attribute, the top responses by r_j − ρ·Σ_{i≠j} r_i, with one-hot λ."""

import json

import pytest
from datasets import Dataset

from cmpo.train.runs import warm_start_dataset

ATTRS = ["short", "list", "cheer"]
#            short list cheer
RATINGS = [(4, 0, 0),   # row 0: only short
           (4, 3, 3),   # row 1: short, but also list and cheer
           (0, 4, 0),   # row 2: only list
           (3, 4, 4),   # row 3: list, also short and cheer
           (0, 0, 3),   # row 4: only cheer
           (2, 1, 4)]   # row 5: cheer, also short and a little list


def _sft():
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "response": f"r{i}",
             "ratings": json.dumps(dict(zip(ATTRS, r)))} for i, r in enumerate(RATINGS)]
    return Dataset.from_list(rows)


def _picked(ds):
    out = {}
    for row in ds:
        out.setdefault(ATTRS[row["weights"].index(1.0)], []).append(row["response"])
    return out


def test_top_fraction_by_rating_with_one_hot_weights():
    ds = warm_start_dataset(_sft(), ATTRS, top_fraction=2 / 6)
    assert len(ds) == 6 and all(sorted(w) == [0.0, 0.0, 1.0] for w in ds["weights"])
    # ρ = 0 ranks by the attribute alone (ties: row order): short 4,4; list 4,4; cheer 4,4
    assert _picked(ds) == {"short": ["r0", "r1"], "list": ["r2", "r3"], "cheer": ["r3", "r5"]}


def test_off_target_penalty_prefers_responses_high_on_their_attribute_only():
    ds = warm_start_dataset(_sft(), ATTRS, top_fraction=1 / 6, off_target_penalty=0.5)
    # short: r0 4 − 0 = 4 beats r1 4 − 3 = 1; list: r2 4 − 0 beats r3 4 − 3.5 = 0.5;
    # cheer: r4 3 − 0 = 3 beats r5 4 − 1.5 = 2.5 and r3 4 − 3.5 = 0.5
    assert _picked(ds) == {"short": ["r0"], "list": ["r2"], "cheer": ["r4"]}


def test_missing_attribute_is_a_clear_error():
    with pytest.raises(ValueError, match="no row has a rating for attribute 'tone'"):
        warm_start_dataset(_sft(), ATTRS + ["tone"], top_fraction=0.5, source="sft/train")
