"""Atomic output directories."""

from __future__ import annotations

import pytest

from cmpo.io import atomic_dir, read_prompt_rows


def test_atomic_dir_replaces_on_success_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()  # invisible until the block finishes
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("crash mid-write")
    assert (out / "a.txt").read_text() == "1"  # the old result is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary leftovers


def test_read_prompt_rows_keeps_line_numbers_and_names_the_bad_field(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_text('{"prompt": "hi", "id": 7}\n\n{"prompt": [{"role": "user", "content": "yo"}], '
                 '"weights": {"humor": 1}}\n')
    assert read_prompt_rows(f) == [{"prompt": "hi", "id": 7, "_line": 1},
                                   {"prompt": [{"role": "user", "content": "yo"}], "weights": {"humor": 1},
                                    "_line": 3}]
    for text, where in [('{"prompt": "ok"}\n{"prompt": 3}\n', "row 2: field 'prompt'"),
                        ('{"prompt": [{"role": "user"}]}\n', "row 1: field 'prompt'"),
                        ('{"prompt": "ok", "attributes": [4]}\n', "row 1: field 'attributes'"),
                        ('[1, 2]\n', "row 1: expected a JSON object"),
                        ('{"prompt": "ok"\n', "row 1: invalid JSON")]:
        f.write_text(text)
        with pytest.raises(ValueError, match=f"in.jsonl: {where}"):
            read_prompt_rows(f)
