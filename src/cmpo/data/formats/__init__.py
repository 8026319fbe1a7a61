"""Readers, one per source format. Each turns rows into :class:`cmpo.data.records.Record` s.

``read(fmt, data, attributes, stats, **options) -> (records, attributes)``: ``data`` is a local
.jsonl/.json/.parquet/.csv file (or a folder of them) or a hub dataset id; ``attributes`` defaults to the
format's usual set (the thesis's, where it used the dataset).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from cmpo.data.records import Record, RowStats

# name -> (module, option names it accepts)
FORMATS: dict[str, str] = {
    "helpsteer": "helpsteer",        # HelpSteer / HelpSteer2 original columns
    "helpsteer2": "helpsteer",
    "helpsteer-nemo": "helpsteer",   # NeMo-Aligner SteerLM regression format (text, 9-value label)
    "oasst1": "oasst",
    "oasst2": "oasst",
    "pku-saferlhf": "pku_saferlhf",
    "beavertails": "pku_saferlhf",
    "generic": "generic",
    "usr": "usr",
    "hh-rlhf": "hh_rlhf",
}


def reader(fmt: str):
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return importlib.import_module(f"cmpo.data.formats.{FORMATS[fmt]}")


def read(fmt: str, data, attributes: Sequence[str] | None = None, stats: RowStats | None = None,
         **options) -> tuple[list[Record], list[str]]:
    """-> (records, the attribute list their ratings/prefs are indexed by)."""
    stats = stats or RowStats()
    return reader(fmt).read(data, list(attributes) if attributes else None, stats, fmt=fmt, **options)


def check_attributes(fmt: str, attributes: list[str] | None, known: Sequence[str],
                     default: Sequence[str]) -> list[str]:
    if not attributes:
        return list(default)
    unknown = [a for a in attributes if a not in known]
    if unknown:
        raise ValueError(f"format {fmt!r} has no attribute(s) {unknown}; known: {', '.join(known)}")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes listed twice: {attributes}")
    return list(attributes)
