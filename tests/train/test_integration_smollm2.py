"""A short real CMPO run: SmolLM2-135M on real OASST1 pairs raises training reward accuracy above 0.5 and
writes a checkpoint that PluralLM.load (the generation code's loader) loads."""

import json
from collections import defaultdict

import pytest
import torch

ATTRS = ["quality", "helpfulness"]


def _oasst_conditioned(path, n: int):
    """Sibling assistant replies whose label for one attribute differs -> (prompt, chosen, rejected, one-hot λ)."""
    msgs = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {m["message_id"]: m for m in msgs}
    children = defaultdict(list)
    for m in msgs:
        if m["role"] == "assistant" and m["parent_id"] in by_id and m.get("labels"):
            children[m["parent_id"]].append(m)
    rows = []
    for pid, kids in sorted(children.items()):
        prompt = by_id[pid]
        if prompt["role"] != "prompter" or len(prompt["text"]) > 160 or len(kids) < 2:
            continue
        kids = [k for k in kids if len(k["text"]) < 400]
        for j, attr in enumerate(ATTRS):
            rated = [(dict(zip(k["labels"]["name"], k["labels"]["value"])).get(attr), k["text"]) for k in kids]
            rated = sorted((r for r in rated if r[0] is not None), key=lambda r: -r[0])
            if len(rated) >= 2 and rated[0][0] > rated[-1][0]:
                w = [0.0, 0.0]
                w[j] = 1.0
                rows.append({"prompt_id": pid, "prompt": [{"role": "user", "content": prompt["text"]}],
                             "chosen": rated[0][1], "rejected": rated[-1][1], "weights": w,
                             "condition": [attr], "margin": rated[0][0] - rated[-1][0]})
        if len(rows) >= n:
            break
    return rows[:n]


@pytest.mark.integration
def test_smollm2_cmpo_on_oasst1_learns_and_saves(tmp_path, shared_data, smollm_dir):
    from datasets import Dataset, DatasetDict

    from cmpo.models.plural import PluralLM
    from cmpo.train import runs
    from cmpo.train.config import load_run_config

    rows = _oasst_conditioned(shared_data / "oasst1" / "oasst1_en_validation.jsonl", 4)
    assert len(rows) == 4
    prep = tmp_path / "prepared"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(prep / "conditioned"))
    (prep / "meta.json").write_text(json.dumps({"attributes": ATTRS, "template": "chat"}))
    cfg = load_run_config(None, [
        f"model.name={smollm_dir}", "model.head_rank=8", "model.lora_rank=8", "data.max_length=64",
        "data.max_prompt_length=32", "train.learning_rate=1e-3", "train.per_device_train_batch_size=2",
        "train.num_train_epochs=2", "train.logging_steps=2", "train.disable_tqdm=true",
        f"train.output_dir={tmp_path / 'ckpt'}", "train.save_steps=1000", "reference.precompute=true",
        f"reference.cache_dir={tmp_path / 'ref'}"])
    torch.set_num_threads(2)
    result = runs.run_cmpo(cfg, prep, tmp_path / "cmpo")
    acc = [h["rewards/accuracies"] for h in result.log_history if "rewards/accuracies" in h]
    assert acc[0] < 1.0 and acc[-1] > 0.5, acc  # the first window starts at Δ = 0 exactly
    plural = PluralLM.load(tmp_path / "cmpo")
    assert plural.attributes == ATTRS
    trained = dict(result.trainer.model.model.named_parameters())
    for name, p in plural.named_parameters():
        if name in trained and p.requires_grad:
            torch.testing.assert_close(p, trained[name].detach(), msg=name)
