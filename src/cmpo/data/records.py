"""The canonical feedback record every reader produces, plus row reading and bad-row accounting.

A :class:`Record` is one prompt (a conversation ending with a user turn), its candidate responses, and
per-response feedback on the selected attributes (index order = ``attributes`` = λ index order):

  ``ratings``  float32 ``[n_responses, k]`` on the 0–4 Likert scale, NaN = not rated   (scalar feedback)
  ``prefs``    list of ``(winner, loser, attribute_index)``                          (pairwise feedback)
  ``finished`` bool ``[n_responses]`` or None (= all finished): False marks a response cut off by a sampling
               budget; it is trained and scored without an end-of-turn token

Rows are read by :func:`iter_rows` (JSONL/JSON read here so errors can name the line; parquet/csv and hub ids
through ``datasets``). A bad row raises :class:`DataError` naming file, line and field, unless the
:class:`RowStats` policy is ``skip``, in which case it is counted by reason. Every row read ends up in exactly
one bucket: ``rejected`` (bad), ``filtered`` (a named filter) or ``used``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LIKERT_MAX = 4.0
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A bad input row: ``where`` ("file:line N"), ``field`` (or None), ``reason`` (a short stats key)."""

    def __init__(self, where: str, field: str | None, reason: str, message: str):
        self.where, self.field, self.reason = where, field, reason
        text = f"{where}: field {field!r}: {message}" if field else f"{where}: {message}"
        super().__init__(text)


@dataclass
class Record:
    prompt: list[dict[str, str]]
    responses: list[str]
    ratings: np.ndarray | None = None          # [n, k] float32, NaN = missing
    prefs: list[tuple[int, int, int]] = field(default_factory=list)
    info: list[dict] | None = None             # per-response extras kept in the SFT rows (e.g. is_safe)
    finished: np.ndarray | None = None         # [n] bool, None = every response finished
    source: str = ""                           # where the record's first row was read
    prompt_id: str = ""

    def __post_init__(self):
        if not self.prompt_id:
            self.prompt_id = prompt_id(self.prompt)
        if self.finished is not None:
            self.finished = np.asarray(self.finished, dtype=bool)
            if self.finished.shape != (len(self.responses),):
                raise ValueError(f"{self.source or 'record'}: finished has shape {self.finished.shape}, expected "
                                 f"({len(self.responses)},)")

    def is_finished(self, j: int) -> bool:
        return True if self.finished is None else bool(self.finished[j])

    @classmethod
    def from_ratings(cls, prompt, responses: Sequence[str], ratings: Sequence[dict[str, float]],
                     attributes: Sequence[str], source: str = "",
                     finished: Sequence[bool] | None = None) -> Record:
        """In-memory scalar feedback (e.g. rule raters): ``ratings[i][attr]`` on 0–4, missing keys = NaN."""
        arr = np.full((len(responses), len(attributes)), np.nan, dtype=np.float32)
        for i, r in enumerate(ratings):
            for j, a in enumerate(attributes):
                if a in r and r[a] is not None:
                    arr[i, j] = float(r[a])
        return cls(as_conversation(prompt), list(responses), ratings=arr, source=source,
                   finished=None if finished is None else list(finished))


def as_conversation(prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def prompt_id(messages: list[dict[str, str]]) -> str:
    """Stable id of a conversation: sha256 of its canonical JSON (first 16 hex digits)."""
    blob = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- accounting


class RowStats:
    """Counts every row read: rejected by reason, filtered by filter, used. ``on_bad_row``: error | skip."""

    def __init__(self, on_bad_row: str = "error"):
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        self.on_bad_row = on_bad_row
        self.read = 0
        self.used = 0
        self.rejected: Counter = Counter()
        self.filtered: Counter = Counter()
        self.examples: dict[str, str] = {}

    def reject(self, err: DataError) -> None:
        """Raise ``err`` (error mode) or count it (skip mode)."""
        if self.on_bad_row == "error":
            raise err
        self.rejected[err.reason] += 1
        self.examples.setdefault(err.reason, str(err))

    def filter(self, name: str, n: int = 1) -> None:
        self.filtered[name] += n

    def as_dict(self) -> dict:
        accounted = self.used + sum(self.rejected.values()) + sum(self.filtered.values())
        return {"read": self.read, "used": self.used, "rejected": dict(sorted(self.rejected.items())),
                "filtered": dict(sorted(self.filtered.items())), "accounted": accounted,
                "examples": dict(sorted(self.examples.items()))}


# --------------------------------------------------------------------------- reading rows


def iter_rows(data: str | Path, split: str | None = None) -> Iterator[tuple[str, dict | DataError]]:
    """Yield ``(where, row)`` for every row, or ``(where, DataError)`` for a row that cannot be parsed.

    Local ``.jsonl``/``.json`` are read line by line (``where`` = "path:line N"); ``.parquet``/``.csv`` and hub
    ids go through ``datasets`` (``where`` = "path row N", 1-based).
    """
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet", ".csv"))
        if not files:
            raise FileNotFoundError(f"{path}: no .jsonl/.json/.parquet/.csv files")
        for f in files:
            yield from iter_rows(f, split)
        return
    if path.suffix in (".jsonl", ".json"):
        yield from _iter_json(path)
        return
    from datasets import load_dataset

    if path.suffix in (".parquet", ".csv"):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found")
        ds = load_dataset(path.suffix[1:], data_files=str(path), split="train")
    elif path.exists():
        raise ValueError(f"{path}: unsupported file type (use .jsonl, .json, .parquet or .csv)")
    else:
        ds = load_dataset(str(data), split=split or "train")
    for i, row in enumerate(ds, 1):
        yield f"{data} row {i}", row


def _iter_json(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"["):  # a JSON list: one document, rows named by item index
        try:
            items = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            yield str(path), DataError(str(path), None, "not_utf8", f"not valid UTF-8 at byte {e.start}")
            return
        except json.JSONDecodeError as e:
            yield f"{path}:line {e.lineno}", DataError(f"{path}:line {e.lineno}", None, "invalid_json",
                                                       f"invalid JSON ({e.msg})")
            return
        for i, obj in enumerate(items, 1):
            where = f"{path} item {i}"
            yield where, obj if isinstance(obj, dict) else DataError(where, None, "not_an_object",
                                                                      "row is not a JSON object")
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:line {n}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, DataError(where, None, "not_utf8", f"not valid UTF-8 at byte {e.start} of the line")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield where, DataError(where, None, "invalid_json", f"invalid or truncated JSON ({e.msg})")
                continue
            yield where, obj if isinstance(obj, dict) else DataError(where, None, "not_an_object",
                                                                      "row is not a JSON object")


# --------------------------------------------------------------------------- field checks (raise DataError)


def get(row: dict, name: str, where: str):
    if name not in row:
        raise DataError(where, name, "missing_field", "missing")
    return row[name]


def get_text(row: dict, name: str, where: str, allow_empty: bool = False) -> str:
    v = get(row, name, where)
    if not isinstance(v, str):
        raise DataError(where, name, "wrong_type", f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise DataError(where, name, "empty_text", "empty")
    return v


def check_rating(v, where: str, name: str, lo: float = 0.0, hi: float = LIKERT_MAX) -> float:
    """A finite number in [lo, hi] (bools rejected)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(where, name, "wrong_type", f"expected a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        raise DataError(where, name, "nan_rating", f"rating is {v}")
    if not lo <= v <= hi:
        raise DataError(where, name, "rating_out_of_range", f"rating {v} outside [{lo}, {hi}]")
    return v


def get_prompt(row: dict, name: str, where: str) -> list[dict[str, str]]:
    """A string or a list of {role, content} messages ending with a user turn."""
    v = get(row, name, where)
    if isinstance(v, str):
        if not v.strip():
            raise DataError(where, name, "empty_text", "empty")
        return [{"role": "user", "content": v}]
    if not isinstance(v, list) or not v:
        raise DataError(where, name, "wrong_type", "expected a string or a non-empty list of messages")
    msgs = []
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(where, f"{name}[{i}]", "wrong_type", "expected {role: str, content: str}")
        if m["role"] not in ROLES:
            raise DataError(where, f"{name}[{i}].role", "wrong_type", f"unknown role {m['role']!r}")
        msgs.append({"role": m["role"], "content": m["content"]})
    if msgs[-1]["role"] != "user":
        raise DataError(where, name, "prompt_not_user", "a prompt must end with a user message")
    return msgs


def check_responses(responses: Sequence[str], where: str, names: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for r, n in zip(responses, names):
        if not r.strip():
            raise DataError(where, n, "empty_response", "empty response")
        if r in seen:
            raise DataError(where, n, "duplicate_response", f"same text as {seen[r]}")
        seen[r] = n


def group_records(items: list[tuple[str, list[dict], list[str], list, list[dict] | None]], k: int,
                  pairwise: bool, stats: RowStats | None = None) -> list[Record]:
    """Merge rows that share a prompt into one record.

    ``items``: ``(where, prompt, responses, feedback, info)``; ``feedback`` is a list of rating rows (each a
    length-k list, NaN missing) for scalar data, or ``(winner_pos, loser_pos, attr)`` tuples (positions into
    this row's ``responses``) for pairwise data. Pairwise: the same response text under the same prompt is
    one response. Scalar: a response already rated under the same prompt is a bad row (``duplicate_response``).
    """
    by_id: dict[str, dict] = {}
    for where, prompt, responses, feedback, info in items:
        pid = prompt_id(prompt)
        g = by_id.get(pid)
        if g is None:
            g = by_id[pid] = {"where": where, "prompt": prompt, "index": {}, "responses": [], "ratings": [],
                              "prefs": [], "info": []}
        if not pairwise and stats is not None:
            dup = next((r for r in responses if r in g["index"]), None)
            if dup is not None:
                stats.used -= 1
                stats.reject(DataError(where, "response", "duplicate_response",
                                       f"response already rated for this prompt at {g['where']}"))
                continue
        pos = []
        for i, resp in enumerate(responses):
            j = g["index"].get(resp)
            if j is None:
                j = g["index"][resp] = len(g["responses"])
                g["responses"].append(resp)
                g["info"].append(dict(info[i]) if info else {})
                if not pairwise:
                    g["ratings"].append(feedback[i])
            pos.append(j)
        if pairwise:
            g["prefs"].extend((pos[w], pos[lo], a) for w, lo, a in feedback)
    out = []
    for pid, g in by_id.items():
        ratings = None if pairwise else np.asarray(g["ratings"], dtype=np.float32).reshape(-1, k)
        info = g["info"] if any(g["info"]) else None
        out.append(Record(g["prompt"], g["responses"], ratings=ratings, prefs=g["prefs"], info=info,
                          source=g["where"], prompt_id=pid))
    return out
