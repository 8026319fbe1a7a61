"""Prepared data -> tokenized datasets -> padded batches for the trainers.

Reads the ``cmpo prepare`` layout (docs/DEVELOPING.md): ``DIR/meta.json`` and the ``sft``, ``pairs`` and
``conditioned`` DatasetDicts. Each row is tokenized once (``Dataset.map``, cached by datasets' fingerprint)
with the same :class:`PromptTemplate` that evaluation and generation use.

Batches:
  SFT        input_ids, attention_mask, response_mask [B, T], labels [B, T] (-100 outside the response;
             only used by the Trainer to count tokens), optional weights [B, k]
  preference input_ids, attention_mask, response_mask [2B, T] (rows 0..B-1 chosen, B..2B-1 rejected),
             optional weights [B, k], ref_chosen / ref_rejected [B] when reference log-probs are precomputed
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cmpo.train.logprobs import collate_sequences

SPLITS = ("sft", "pairs", "conditioned")


def load_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a `cmpo prepare` output directory?")
    return json.loads(path.read_text())


def load_split(data_dir: str | Path, kind: str):
    """-> (DatasetDict for ``kind`` in sft|pairs|conditioned, meta dict)."""
    from datasets import load_from_disk

    if kind not in SPLITS:
        raise ValueError(f"unknown prepared split {kind!r}; expected one of {SPLITS}")
    path = Path(data_dir) / kind
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: prepared data in {data_dir} has no {kind!r} split")
    return load_from_disk(str(path)), load_meta(data_dir)


def _check_prompt(prompt, where: str) -> None:
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) for m in prompt):
        raise ValueError(f"{where}: field 'prompt' must be a non-empty list of {{role, content}} messages")
    if prompt[-1].get("role") != "user":
        raise ValueError(f"{where}: field 'prompt' must end with a user message, got {prompt[-1].get('role')!r}")


def _truncate(prompt_ids: list[int], response_ids: list[int], max_prompt: int, max_len: int, where: str):
    """Keep the prompt's end (≤ max_prompt) and the response's start (total ≤ max_len)."""
    p = prompt_ids[-max_prompt:] if max_prompt else prompt_ids
    if max_len - len(p) < 1:
        raise ValueError(f"{where}: the prompt takes {len(p)} tokens and leaves no room for the response in "
                         f"max_length={max_len}; raise data.max_length or lower data.max_prompt_length")
    return p, response_ids[: max_len - len(p)]


def tokenize_pairs(ds, template, max_length: int, max_prompt_length: int, source: str = "pairs"):
    """Add ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (truncated) to a pairs/conditioned dataset.

    Optional ``chosen_finished`` / ``rejected_finished`` columns (False = cut off) drop the end-of-turn token."""
    for col in ("prompt", "chosen", "rejected"):
        if col not in ds.column_names:
            raise ValueError(f"{source}: missing field {col!r} (columns: {ds.column_names})")

    def encode(row, idx):
        _check_prompt(row["prompt"], f"{source} row {idx}")
        for col in ("chosen", "rejected"):
            if not isinstance(row[col], str) or not row[col]:
                raise ValueError(f"{source} row {idx}: field {col!r} must be a non-empty string")
        p, c = template.encode(row["prompt"], row["chosen"], finished=row.get("chosen_finished", True))
        _, r = template.encode(row["prompt"], row["rejected"], finished=row.get("rejected_finished", True))
        where = f"{source} row {idx}"
        pc, c = _truncate(p, c, max_prompt_length, max_length, where)
        _, r = _truncate(p, r, max_prompt_length, max_length, where)
        return {"prompt_ids": pc, "chosen_ids": c, "rejected_ids": r}

    return ds.map(encode, with_indices=True, desc=f"tokenizing {source}")


def tokenize_sft(ds, template, max_length: int, max_prompt_length: int, source: str = "sft"):
    """Add ``prompt_ids``, ``response_ids`` to an SFT dataset (prompt, response, optional finished)."""
    for col in ("prompt", "response"):
        if col not in ds.column_names:
            raise ValueError(f"{source}: missing field {col!r} (columns: {ds.column_names})")

    def encode(row, idx):
        _check_prompt(row["prompt"], f"{source} row {idx}")
        if not isinstance(row["response"], str) or not row["response"]:
            raise ValueError(f"{source} row {idx}: field 'response' must be a non-empty string")
        p, r = template.encode(row["prompt"], row["response"], finished=row.get("finished", True))
        p, r = _truncate(p, r, max_prompt_length, max_length, f"{source} row {idx}")
        return {"prompt_ids": p, "response_ids": r}

    return ds.map(encode, with_indices=True, desc=f"tokenizing {source}")


class SFTCollator:
    """Rows with prompt_ids/response_ids (+ weights) -> an SFT batch."""

    def __init__(self, pad_id: int, with_weights: bool = False):
        self.pad_id, self.with_weights = pad_id, with_weights

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_sequences([r["prompt_ids"] for r in rows], [r["response_ids"] for r in rows], self.pad_id)
        batch["labels"] = batch["input_ids"].masked_fill(batch["response_mask"] == 0, -100)
        if self.with_weights:
            batch["weights"] = torch.tensor([r["weights"] for r in rows], dtype=torch.float32)
        return batch


class PairCollator:
    """Rows with prompt_ids/chosen_ids/rejected_ids (+ weights, ref_chosen, ref_rejected) -> a [2B, T] batch."""

    def __init__(self, pad_id: int, with_weights: bool = False):
        self.pad_id, self.with_weights = pad_id, with_weights

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt_ids"] for r in rows]
        batch = collate_sequences(prompts + prompts, [r["chosen_ids"] for r in rows]
                                  + [r["rejected_ids"] for r in rows], self.pad_id)
        if self.with_weights:
            batch["weights"] = torch.tensor([r["weights"] for r in rows], dtype=torch.float32)
        if "ref_chosen" in rows[0]:
            batch["ref_chosen"] = torch.tensor([r["ref_chosen"] for r in rows], dtype=torch.float32)
            batch["ref_rejected"] = torch.tensor([r["ref_rejected"] for r in rows], dtype=torch.float32)
        return batch
