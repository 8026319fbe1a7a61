"""HelpSteer / HelpSteer2, original columns or NVIDIA's SteerLM regression format.

``helpsteer`` / ``helpsteer2``: one row per (prompt, response): ``prompt, response, helpfulness, correctness,
coherence, complexity, verbosity`` (0–4 Likert). Rows are grouped by prompt. HelpSteer2 multi-turn prompts
separate turns with ``<extra_id_1>User`` / ``<extra_id_1>Assistant`` lines; they become messages.

``helpsteer-nemo``: NeMo-Aligner's regression rows ``{"text", "label"}``: ``text`` is the whole templated
conversation ``<extra_id_0>System\\n…\\n<extra_id_1>User\\n…\\n<extra_id_1>Assistant\\n{response}\\n<extra_id_2>``;
``label`` has 9 values in the order of :data:`NEMO_ATTRIBUTES`, -100 = not annotated (→ NaN).
"""

from __future__ import annotations

import math

from cmpo.data.formats import check_attributes
from cmpo.data.records import (
    DataError,
    RowStats,
    check_rating,
    check_responses,
    get,
    get_text,
    group_records,
    iter_rows,
)
from cmpo.data.templates import THESIS_SYSTEM

HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
NEMO_ATTRIBUTES = ("quality", "toxicity", "humor", "creativity") + HELPSTEER_ATTRIBUTES
NEMO_MISSING = -100


def parse_turns(text: str, where: str, field: str) -> list[dict[str, str]]:
    """``u1\\n<extra_id_1>Assistant\\na1\\n<extra_id_1>User\\nu2`` (HelpSteer2 prompt) -> messages."""
    chunks = text.split("\n<extra_id_1>")
    msgs = [{"role": "user", "content": chunks[0]}]
    for c in chunks[1:]:
        role, _, content = c.partition("\n")
        if role not in ("User", "Assistant"):
            raise DataError(where, field, "bad_conversation", f"unexpected turn marker <extra_id_1>{role!r}")
        msgs.append({"role": "user" if role == "User" else "assistant", "content": content})
    if msgs[-1]["role"] != "user":
        raise DataError(where, field, "prompt_not_user", "a prompt must end with a user turn")
    return msgs


def parse_nemo_text(text: str, where: str) -> tuple[list[dict[str, str]], str]:
    """NeMo SteerLM ``text`` -> (prompt messages, final assistant response)."""
    head = "<extra_id_0>System\n"
    if not text.startswith(head):
        raise DataError(where, "text", "bad_conversation", "does not start with '<extra_id_0>System\\n'")
    parts = text[len(head):].split("<extra_id_1>")
    system = parts[0].removesuffix("\n")
    msgs = [] if system in ("", THESIS_SYSTEM) else [{"role": "system", "content": system}]
    for p in parts[1:]:
        role, _, content = p.partition("\n")
        if role not in ("User", "Assistant"):
            raise DataError(where, "text", "bad_conversation", f"unexpected turn marker <extra_id_1>{role!r}")
        if role == "Assistant":  # drop a trailing attribute label ``\n<extra_id_2>...``
            content = content.split("<extra_id_2>")[0]
        msgs.append({"role": "user" if role == "User" else "assistant", "content": content.removesuffix("\n")})
    if len(msgs) < 2 or msgs[-1]["role"] != "assistant" or msgs[-2]["role"] != "user":
        raise DataError(where, "text", "bad_conversation", "must end with a User turn then an Assistant turn")
    return msgs[:-1], msgs[-1]["content"]


def read(data, attributes, stats: RowStats, fmt: str = "helpsteer", **_):
    nemo = fmt == "helpsteer-nemo"
    known = NEMO_ATTRIBUTES if nemo else HELPSTEER_ATTRIBUTES
    attributes = check_attributes(fmt, attributes, known, HELPSTEER_ATTRIBUTES)
    items = []
    for where, row in iter_rows(data):
        stats.read += 1
        try:
            if isinstance(row, DataError):
                raise row
            if nemo:
                prompt, response = parse_nemo_text(get_text(row, "text", where), where)
                label = get(row, "label", where)
                if not isinstance(label, list) or len(label) != len(NEMO_ATTRIBUTES):
                    raise DataError(where, "label", "wrong_type", f"expected a list of {len(NEMO_ATTRIBUTES)} numbers")
                values = {}
                for a, v in zip(NEMO_ATTRIBUTES, label):
                    values[a] = math.nan if v == NEMO_MISSING else check_rating(v, where, f"label[{a}]")
                ratings = [values[a] for a in attributes]
            else:
                prompt = parse_turns(get_text(row, "prompt", where), where, "prompt")
                response = get_text(row, "response", where, allow_empty=True)
                ratings = [check_rating(get(row, a, where), where, a) for a in attributes]
            check_responses([response], where, ["response"])
        except DataError as e:
            stats.reject(e)
            continue
        stats.used += 1
        items.append((where, prompt, [response], [ratings], None))
    return group_records(items, len(attributes), pairwise=False, stats=stats), attributes
