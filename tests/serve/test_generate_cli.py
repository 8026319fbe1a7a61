"""`cmpo generate` for each model kind: flags, a weights file, JSONL in/out with row-named errors, chat."""

from __future__ import annotations

import json

import pytest

from cmpo.cli import main
from cmpo.serve.generate import GenerationOptions, SteerableModel

GREEDY = GenerationOptions(max_new_tokens=12)


@pytest.fixture(scope="module")
def plural(plural_dir):
    return SteerableModel.load(str(plural_dir))


def test_cli_generate_plural(plural_dir, plural, capsys):
    rc = main(["generate", "--model", str(plural_dir), "--weights", "humor=1", "--prompt", "hello there",
               "--max-new-tokens", "12"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out == plural.generate(["hello there"], weights={"humor": 1}, options=GREEDY)[0] + "\n"
    assert main(["generate", "--model", str(plural_dir), "--weights", "bogus=1", "--prompt", "x"]) == 2
    assert "unknown attribute" in capsys.readouterr().err


def test_cli_generate_weights_file_and_jsonl(plural_dir, plural, tmp_path, capsys):
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"safety": 1}))
    inp = tmp_path / "in.jsonl"
    rows = [{"id": 1, "prompt": "hello there"},
            {"id": 2, "prompt": [{"role": "user", "content": "list two items"}], "weights": {"humor": 1}}]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(plural_dir), "--weights-file", str(wf), "--input", str(inp),
                 "--output", str(out), "--max-new-tokens", "12"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [1, 2]
    assert got[0]["weights"] == {"helpfulness": 0.0, "humor": 0.0, "safety": 1.0}
    assert got[1]["weights"] == {"helpfulness": 0.0, "humor": 1.0, "safety": 0.0}
    expected = [plural.generate([r["prompt"]], weights=w, options=GREEDY)[0]
                for r, w in zip(rows, ({"safety": 1}, {"humor": 1}))]
    assert [g["response"] for g in got] == expected
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    assert main(["generate", "--model", str(plural_dir), "--input", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: row 2: field 'prompt'" in err


def test_cli_generate_plain_hf_and_chat(capsys, monkeypatch):
    import io

    base = SteerableModel.load("tiny-random")
    assert main(["generate", "--model", "tiny-random", "--prompt", "hello", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == base.generate(["hello"], options=GREEDY)[0] + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\n"))
    assert main(["generate", "--model", "tiny-random", "--chat", "--max-new-tokens", "12"]) == 0
    assert base.generate(["hello"], options=GREEDY)[0] in capsys.readouterr().out


def test_cli_generate_steerlm(steerlm_dir, capsys):
    sm = SteerableModel.load(str(steerlm_dir))
    assert main(["generate", "--model", str(steerlm_dir), "--method", "steerlm", "--attributes", "humor=4",
                 "--prompt", "hello", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == sm.generate(["hello"], attributes={"humor": 4}, options=GREEDY)[0] + "\n"
    assert main(["generate", "--model", str(steerlm_dir), "--method", "plural", "--prompt", "x"]) == 2
