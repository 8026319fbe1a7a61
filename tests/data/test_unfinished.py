"""Responses cut off by a sampling budget (``finished: false``) carry no end-of-turn token anywhere."""

import json

import numpy as np
import pytest

from cmpo.data.formats import read
from cmpo.data.prepare import prepare, token_lengths
from cmpo.data.records import DataError, Record
from cmpo.data.templates import PromptTemplate


@pytest.fixture(scope="module")
def template(tiny_model_dir):
    from cmpo.models.loading import load_tokenizer

    return PromptTemplate.resolve("auto", load_tokenizer(tiny_model_dir))


@pytest.mark.parametrize("spec", ["auto", "thesis"])
def test_unfinished_response_is_the_finished_one_without_its_end_of_turn(tiny_model_dir, spec):
    from cmpo.models.loading import load_tokenizer

    template = PromptTemplate.resolve(spec, load_tokenizer(tiny_model_dir))
    prompt = [{"role": "user", "content": "List three fruits."}]
    response = "- apple\n- pear\n- plum"
    _, done = template.encode(prompt, response)
    _, cut = template.encode(prompt, response, finished=False)
    end = template.response_text(response)[len(response):]
    assert end  # the finished text has an end marker after the response
    assert template.response_text(response, finished=False) == response
    assert cut == done[:len(cut)] and len(done) > len(cut)
    assert template.tokenizer.eos_token_id not in cut


def test_generic_finished_flags_reach_every_prepared_split(tmp_path, template):
    rows = [{"prompt": f"q{i}", "responses": ["short answer", "a long answer that was cut"],
             "ratings": [{"c": 4}, {"c": 0}], "finished": [True, False]} for i in range(4)]
    f = tmp_path / "fb.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = read("generic", str(f), ["c"])
    assert all(r.finished.tolist() == [True, False] for r in records)
    data = prepare(records, ["c"], template=template, val_fraction=0)
    sft = data.sft["train"]
    assert {(r["response"], r["finished"]) for r in sft} == {("short answer", True),
                                                             ("a long answer that was cut", False)}
    for kind in ("pairs", "conditioned"):
        ds = getattr(data, kind)["train"]
        assert len(ds) == 4
        assert set(ds["chosen_finished"]) == {True} and set(ds["rejected_finished"]) == {False}
    # the length filter counts the tokens that training will see
    _, r_len = token_lengths(records[:1], template)
    assert r_len[0].tolist() == [len(template.encode(records[0].prompt, y, finished=f)[1])
                                 for y, f in zip(records[0].responses, [True, False])]


def test_tokenized_pairs_and_sft_rows_drop_the_end_token_only_when_cut(template):
    from cmpo.train.data import tokenize_pairs, tokenize_sft

    rec = Record.from_ratings("Say hi.", ["hi", "hello there, how are"], [{"c": 4}, {"c": 1}], ["c"],
                              finished=[True, False])
    data = prepare([rec], ["c"], template=template, val_fraction=0)
    eos = template.tokenizer.eos_token_id
    row = tokenize_pairs(data.conditioned["train"], template, 256, 64)[0]
    assert eos in row["chosen_ids"]
    assert eos not in row["rejected_ids"]
    sft = tokenize_sft(data.sft["train"], template, 256, 64)
    by_text = {r["response"]: r["response_ids"] for r in sft}
    assert eos in by_text["hi"] and eos not in by_text["hello there, how are"]


def test_bad_finished_field_names_file_row_and_field(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"], "ratings": [{"c": 1}, {"c": 2}],
                             "finished": [True, "no"]}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:line 1: field 'finished'"):
        read("generic", str(f), ["c"])


def test_record_checks_finished_shape():
    with pytest.raises(ValueError, match="finished has shape"):
        Record([{"role": "user", "content": "q"}], ["a", "b"], ratings=np.zeros((2, 1), np.float32),
               finished=[True])
