"""Readers on the real shared files; counts are recomputed independently from the raw JSON."""

import json
from collections import defaultdict

import numpy as np
import pytest

from cmpo.data.formats import read
from cmpo.data.records import RowStats


def _accounted(s: RowStats) -> None:
    d = s.as_dict()
    assert d["accounted"] == d["read"]


def test_oasst1_tree_reconstruction(shared_data):
    path = shared_data / "oasst1" / "oasst1_en_validation.jsonl"
    stats = RowStats()
    records, attrs = read("oasst1", path, ["quality", "humor", "toxicity", "creativity"], stats)
    _accounted(stats)
    # independent count: walk parents, drop deleted/orphaned chains, group assistant replies by parent
    msgs = {m["message_id"]: m for m in map(json.loads, path.read_text().splitlines())}

    def reachable(m):
        while m is not None:
            if m["deleted"]:
                return False
            if m["parent_id"] is None:
                return True
            m = msgs.get(m["parent_id"])
        return False

    replies = defaultdict(list)
    for m in msgs.values():
        if m["role"] == "assistant" and reachable(m) and msgs[m["parent_id"]]["role"] == "prompter":
            replies[m["parent_id"]].append(m)
    for p in replies:  # identical sibling texts count once
        replies[p] = list({m["text"]: m for m in reversed(replies[p])}.values())
    assert len(records) == len(replies)

    def rated(m, a):
        return m["labels"] is not None and a in m["labels"]["name"]

    expected_2plus = sum(sum(rated(m, "quality") for m in rs) >= 2 for rs in replies.values())
    got_2plus = sum(int((~np.isnan(r.ratings[:, 0])).sum() >= 2) for r in records)
    assert got_2plus == expected_2plus and got_2plus > 100
    for j, a in enumerate(attrs):  # attribute coverage: rated replies per label
        want = sum(rated(m, a) for rs in replies.values() for m in rs)
        assert int((~np.isnan(np.concatenate([r.ratings[:, j] for r in records]))).sum()) == want
    assert stats.filtered["missing_parent"] == sum(
        1 for m in msgs.values() if m["parent_id"] and m["parent_id"] not in msgs)
    # Likert rule: 4 * value, and the prompt is the full path ending with the user's turn
    r0 = records[0]
    assert all(m["role"] in ("user", "assistant") for m in r0.prompt) and r0.prompt[-1]["role"] == "user"
    first_reply = next(m for m in msgs.values() if m["text"] == r0.responses[0])
    lab = dict(zip(first_reply["labels"]["name"], first_reply["labels"]["value"]))
    assert r0.ratings[0, 0] == pytest.approx(4 * lab["quality"])


@pytest.mark.parametrize("name,n_fields", [("pku_saferlhf_alignanything_sample.jsonl", 7),
                                           ("pku_saferlhf_alpaca7b_test_head.jsonl", 16)])
def test_pku_schemas_and_safety_filter(shared_data, name, n_fields):
    path = shared_data / "pku_saferlhf" / name
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows[0]) == n_fields
    differ = [r for r in rows if r["is_response_0_safe"] != r["is_response_1_safe"]]
    stats = RowStats()
    records, attrs = read("pku-saferlhf", path, None, stats)
    _accounted(stats)
    assert attrs == ["helpfulness", "safety"]
    assert stats.used == len(differ) and stats.filtered["same_safety_label"] == len(rows) - len(differ)
    kept = {(r.prompt[-1]["content"], tuple(r.responses)) for r in records}
    assert sum(len(r.responses) for r in records) == 2 * len(differ)
    for row in differ:
        rec = next(r for r in records if r.prompt[-1]["content"] == row["prompt"])
        i0, i1 = rec.responses.index(row["response_0"]), rec.responses.index(row["response_1"])
        idx = [i0, i1]
        assert (idx[row["safer_response_id"]], idx[1 - row["safer_response_id"]], 1) in rec.prefs
        assert (idx[row["better_response_id"]], idx[1 - row["better_response_id"]], 0) in rec.prefs
    assert kept
    all_stats = RowStats()
    all_records, _ = read("pku-saferlhf", path, None, all_stats, safety_filter="none")
    assert all_stats.used == len(rows) and sum(len(r.prefs) for r in all_records) == 2 * len(rows)


def test_helpsteer_nemo_fixture(shared_data):
    path = shared_data / "helpsteer2_nemo_fixture" / "helpsteer2_nemo_regression.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    records, attrs = read("helpsteer-nemo", path, None, RowStats())
    assert attrs == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    assert sum(len(r.responses) for r in records) == len(rows)
    users = {r["text"].split("<extra_id_1>User\n")[1].split("\n<extra_id_1>Assistant")[0] for r in rows}
    assert {r.prompt[-1]["content"] for r in records} == users
    resp = records[0].responses[0]
    row = next(r for r in rows if resp in r["text"])
    assert list(records[0].ratings[0]) == row["label"][4:]
    assert row["text"].endswith(resp + "\n<extra_id_2>")


def test_helpsteer_original_columns(tmp_path):
    rows = [{"prompt": "Hi<extra_id_1>", "response": "a", "helpfulness": 1, "correctness": 2, "coherence": 3,
             "complexity": 0, "verbosity": 4}]
    rows = [dict(rows[0], prompt="Q1\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ2", response=x, helpfulness=h)
            for x, h in (("r1", 1), ("r2", 3))]
    f = tmp_path / "hs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    records, _ = read("helpsteer2", f, None, RowStats())
    assert len(records) == 1
    assert records[0].prompt == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                                 {"role": "user", "content": "Q2"}]
    assert records[0].ratings[:, 0].tolist() == [1.0, 3.0]


def test_usr_and_hh(shared_data):
    stats = RowStats()
    records, attrs = read("usr", shared_data / "topical_chat_usr" / "topical_chat_usr.jsonl", None, stats)
    _accounted(stats)
    assert len(records) == 45 and stats.read == 270
    assert sum(len(r.responses) for r in records) == 270 - stats.filtered["duplicate_system_output"]
    assert np.nanmax(np.concatenate([r.ratings for r in records])) <= 4.0
    assert records[0].prompt[0]["role"] == "system" and records[0].prompt[-1]["role"] == "user"
    stats = RowStats("skip")
    records, attrs = read("hh-rlhf", shared_data / "hh_rlhf_harmless" / "harmless_base_test.jsonl", None, stats)
    _accounted(stats)
    assert attrs == ["harmlessness"] and stats.read == 1732
    assert sum(len(r.prefs) for r in records) == stats.used
