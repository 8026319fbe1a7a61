"""Atomic output directories."""

from __future__ import annotations

import pytest

from cmpo.io import atomic_dir


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
