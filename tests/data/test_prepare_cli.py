"""`cmpo prepare` end to end on a real shared file with the tiny tokenizer."""

import json

from cmpo.cli import main
from cmpo.data.prepare import load_prepared


def test_cli_prepare_oasst(shared_data, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "prep"
    rc = main(["prepare", "--format", "oasst1", "--data", str(shared_data / "oasst1" / "oasst1_en_validation.jsonl"),
               "--attributes", "quality,humor", "--model", "tiny-random", "--out", str(out),
               "--max-length-pairs", "4096", "--val-fraction", "0.1"])
    assert rc == 0 and "conditions per |S|" in capsys.readouterr().out
    data = load_prepared(out)
    assert data.meta["attributes"] == ["quality", "humor"] and data.meta["template"] == "chat"
    rows = data.stats["rows"]
    assert rows["read"] == 1477 == rows["accounted"]
    cond = data.conditioned["train"]
    assert set(cond.column_names) == {"prompt_id", "prompt", "chosen", "rejected", "chosen_finished", "rejected_finished",
                                     "weights", "condition", "margin"}
    for row in cond.select(range(min(50, len(cond)))):
        assert row["prompt"][-1]["role"] == "user" and len(row["weights"]) == 2 and row["margin"] > 0
        assert {a for a, w in zip(["quality", "humor"], row["weights"]) if w > 0} == set(row["condition"])
    for kind in ("sft", "pairs", "conditioned"):
        d = getattr(data, kind)
        assert not set(d["train"]["prompt_id"]) & set(d["validation"]["prompt_id"])
        assert data.stats["splits"][kind] == {"train": len(d["train"]), "validation": len(d["validation"])}
    assert json.loads(data.sft["train"][0]["ratings"]).keys() == {"quality", "humor"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    assert data.meta["off_target_penalty"] == 0.0
    # --off-target-penalty changes which pair each (prompt, condition) keeps, not which (prompt, condition)s exist
    rc = main(["prepare", "--format", "oasst1", "--data", str(shared_data / "oasst1" / "oasst1_en_validation.jsonl"),
               "--attributes", "quality,humor", "--model", "tiny-random", "--out", str(tmp_path / "rho"),
               "--max-length-pairs", "4096", "--val-fraction", "0.1", "--off-target-penalty", "0.5"])
    rho = load_prepared(tmp_path / "rho")
    assert rc == 0 and rho.meta["off_target_penalty"] == 0.5
    key = lambda d: sorted(zip(d["prompt_id"], map(tuple, d["condition"])))  # noqa: E731
    assert key(rho.conditioned["train"]) == key(cond)
    capsys.readouterr()
    # the default error mode stops on the real hh-rlhf rows that lack a final reply, naming the line
    rc = main(["prepare", "--format", "hh-rlhf", "--data", str(shared_data / "hh_rlhf_harmless" / "harmless_base_test.jsonl"),
               "--model", "none", "--out", str(tmp_path / "hh")])
    assert rc == 2 and "harmless_base_test.jsonl:line" in capsys.readouterr().out and not (tmp_path / "hh").exists()
