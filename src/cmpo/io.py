"""Files in and out: atomic outputs (build in a temporary sibling, then one rename: no half-written results) and
the prompts JSONL reader."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` write into ``tmp``; on success ``tmp`` replaces ``out`` in one rename.

    On an exception nothing at ``out`` changes and the temporary directory is removed.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(rows, path: str | os.PathLike) -> Path:
    """Write ``rows`` (dicts) as JSON lines to ``path`` atomically (a temp file in the same dir, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def read_prompt_rows(path: str | os.PathLike) -> list[dict]:
    """A prompts JSONL file (``cmpo generate --input``, ``negatives.prompts``) -> its rows, each with ``_line``.

    Every row needs ``prompt``: a string or a list of ``{role, content}`` messages; optional ``weights``
    (object, string or list) and ``attributes`` (object). Blank lines are skipped; a bad row raises
    ``ValueError`` naming the file, row and field."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: row {i}: invalid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: row {i}: expected a JSON object")  # noqa: TRY004 - bad user input, not a programming error
            p = row.get("prompt")
            ok = isinstance(p, str) or (isinstance(p, list) and p and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in p))
            if not ok:
                raise ValueError(f"{path}: row {i}: field 'prompt' must be a string or a list of "
                                 "{role, content} messages")
            for key, types in (("weights", (dict, str, list)), ("attributes", (dict,))):
                if row.get(key) is not None and not isinstance(row[key], types):
                    raise ValueError(f"{path}: row {i}: field '{key}' has the wrong type")
            row["_line"] = i
            rows.append(row)
    return rows
