"""Every bad-input case names the file, the line and the field; skip mode counts instead."""

import json

import pytest

from cmpo.data.formats import read
from cmpo.data.records import DataError, RowStats

GOOD = {"prompt": "hi", "responses": ["a", "b"], "ratings": [{"q": 1, "h": 2}, {"q": 3, "h": 0}]}


def _write(tmp_path, bad: bytes) -> str:
    f = tmp_path / "feedback.jsonl"
    f.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad + b"\n")
    return f


CASES = {
    "missing_field": (json.dumps({"prompt": "x", "responses": ["a", "b"]}).encode(), "ratings"),
    "wrong_type": (json.dumps({"prompt": 3, "responses": ["a"], "ratings": [{"q": 1}]}).encode(), "prompt"),
    "mistyped_rating": (json.dumps({**GOOD, "ratings": [{"q": "4"}, {"q": 1}]}).encode(), "ratings[0].q"),
    "out_of_range": (json.dumps({**GOOD, "ratings": [{"q": 5}, {"q": 1}]}).encode(), "ratings[0].q"),
    "nan": (b'{"prompt": "x", "responses": ["a", "b"], "ratings": [{"q": 1}, {"q": NaN}]}', "ratings[1].q"),
    "empty_response": (json.dumps({**GOOD, "responses": ["a", "  "]}).encode(), "responses[1]"),
    "duplicate_response": (json.dumps({**GOOD, "responses": ["a", "a"]}).encode(), "responses[1]"),
    "unknown_attribute": (json.dumps({**GOOD, "ratings": [{"q": 1}, {"qq": 1}]}).encode(), "ratings[1].qq"),
    "truncated_json": (json.dumps(GOOD).encode()[:-10], None),
    "not_utf8": (b'{"prompt": "caf\xe9", "responses": ["a"], "ratings": [{"q": 1}]}', None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_row_names_file_line_field(tmp_path, case):
    bad, field = CASES[case]
    f = _write(tmp_path, bad)
    with pytest.raises(DataError) as e:
        read("generic", f, ["q", "h"], RowStats("error"))
    msg = str(e.value)
    assert f"{f}:line 2" in msg
    if field:
        assert f"'{field}'" in msg and e.value.field == field
    stats = RowStats("skip")
    records, _ = read("generic", f, ["q", "h"], stats)
    assert stats.read == 2 and stats.used == 1 and sum(stats.rejected.values()) == 1
    assert len(records) == 1


def test_pairwise_generic_and_pku_mistyped_id(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "x", "chosen": "a", "rejected": "b", "attribute": "q"}) + "\n"
                 + json.dumps({"prompt": "x", "chosen": "b", "rejected": "c", "attribute": "h"}) + "\n")
    records, attrs = read("generic", f, None, RowStats())
    assert attrs == ["q", "h"] and records[0].responses == ["a", "b", "c"]
    assert records[0].prefs == [(0, 1, 0), (1, 2, 1)]
    g = tmp_path / "pku.jsonl"
    g.write_text(json.dumps({"prompt": "x", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
                             "is_response_1_safe": False, "better_response_id": "1", "safer_response_id": 0}))
    with pytest.raises(DataError, match=r"pku.jsonl:line 1: field 'better_response_id'"):
        read("pku-saferlhf", g, None, RowStats())


def test_unknown_attribute_for_named_format(shared_data):
    with pytest.raises(ValueError, match="humour"):
        read("oasst1", shared_data / "oasst1" / "oasst1_en_validation.jsonl", ["humour"], RowStats())
