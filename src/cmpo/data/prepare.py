"""Orchestration and the ``cmpo prepare`` command: records -> SFT rows, per-attribute pairs, λ-conditioned pairs.

Library use (e.g. in-memory rule-rated feedback)::

    data = prepare(records, attributes, scheme="powerset", template=PromptTemplate.resolve("auto", tok))
    data.save(out_dir)                  # atomic: built next to out_dir, then os.replace
    data = load_prepared(out_dir)       # meta, stats, sft, pairs, conditioned

Steps: length filter (prompt + response tokens after templating: ``max_length_sft`` for SFT rows,
``max_length_pairs`` for responses allowed in pairs) -> ordered pairs with wins (:mod:`cmpo.data.pairs`) ->
per-attribute pairs and conditions with net-margin selection -> λ (:mod:`cmpo.data.weights`) -> split by
prompt_id (a seeded permutation of the sorted ids; no prompt on both sides).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmpo.data.pairs import attribute_pairs, build_pair_table, conditions
from cmpo.data.records import DataError, Record, RowStats
from cmpo.data.weights import SCHEMES, condition_masks, mask_bits, weights

log = logging.getLogger(__name__)
SPLITS = ("train", "validation")
KINDS = ("sft", "pairs", "conditioned")


@dataclass
class PreparedData:
    meta: dict
    stats: dict
    sft: object          # datasets.DatasetDict
    pairs: object
    conditioned: object
    extra: dict = field(default_factory=dict)

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the layout of docs/DEVELOPING.md ("Prepared data") atomically."""
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        old = None
        try:
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=2, ensure_ascii=False))
            (tmp / "stats.json").write_text(json.dumps(self.stats, indent=2, ensure_ascii=False))
            for kind in KINDS:
                getattr(self, kind).save_to_disk(str(tmp / kind))
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / "x")
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return out


def load_prepared(path: str | Path) -> PreparedData:
    from datasets import load_from_disk

    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path}/meta.json not found: is {path} a `cmpo prepare` output directory?")
    meta = json.loads((path / "meta.json").read_text())
    stats = json.loads((path / "stats.json").read_text())
    return PreparedData(meta, stats, *(load_from_disk(str(path / k)) for k in KINDS))


# --------------------------------------------------------------------------- library


def split_prompts(prompt_ids: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """-> the validation prompt ids: a seeded permutation of the sorted unique ids, first ⌈f·P⌉ (≥1 if f>0, P≥2)."""
    ids = sorted(set(prompt_ids))
    if val_fraction <= 0 or len(ids) < 2:
        return set()
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    perm = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in perm[:n_val]}


def token_lengths(records: Sequence[Record], template) -> tuple[list[int], list[np.ndarray]]:
    """Prompt and response token counts, exactly as ``template.encode`` would produce them."""
    from tqdm.auto import tqdm

    tok = template.tokenizer
    prompts = [template.render_prompt(r.prompt) for r in records]
    p_len, r_len = [], []
    bs = 512
    for s in tqdm(range(0, len(records), bs), desc="tokenizing", unit="batch", disable=len(records) < 2000):
        batch = records[s:s + bs]
        p_len += [len(x) for x in tok(prompts[s:s + bs], add_special_tokens=False)["input_ids"]]
        texts = [template.response_text(y, r.is_finished(j)) for r in batch for j, y in enumerate(r.responses)]
        lens = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []
        o = 0
        for r in batch:
            r_len.append(np.asarray(lens[o:o + len(r.responses)], dtype=np.int64))
            o += len(r.responses)
    return p_len, r_len


def _features(kind: str):
    from datasets import Features, List, Value

    msg = List({"role": Value("string"), "content": Value("string")})
    base = {"prompt_id": Value("string"), "prompt": msg}
    if kind == "sft":
        return Features({**base, "response": Value("string"), "ratings": Value("string"),
                         "finished": Value("bool")})
    pair = {**base, "chosen": Value("string"), "rejected": Value("string"),
            "chosen_finished": Value("bool"), "rejected_finished": Value("bool")}
    if kind == "pairs":
        return Features({**pair, "attribute": Value("string"), "margin": Value("float32")})
    return Features({**pair, "weights": List(Value("float32")), "condition": List(Value("string")),
                     "margin": Value("float32")})


def _dataset_dict(kind: str, cols: dict, is_val: np.ndarray):
    from datasets import Dataset, DatasetDict

    feats = _features(kind)
    out = {}
    for name, sel in (("train", ~is_val), ("validation", is_val)):
        idx = np.flatnonzero(sel)
        out[name] = Dataset.from_dict({c: [v[i] for i in idx] if isinstance(v, list) else v[idx].tolist()
                                       for c, v in cols.items()}, features=feats)
    return DatasetDict(out)


def prepare(records: Sequence[Record], attributes: Sequence[str], scheme: str = "powerset", template=None, *,
            max_length_sft: int | None = 2048, max_length_pairs: int | None = 512, val_fraction: float = 0.05,
            seed: int = 0, select: str = "best", off_target_penalty: float = 0.0, row_stats: RowStats | None = None,
            source: dict | None = None, validation_prompt_ids: set[str] | None = None) -> PreparedData:
    """Records -> :class:`PreparedData`. ``template=None`` skips the length filter.

    ``off_target_penalty`` ρ: rank each (prompt, condition)'s pairs by Σ_{j∈S} diff_j − ρ·Σ_{j∉S} diff_j
    (:func:`cmpo.data.pairs.conditions`; 0 = the thesis's net margin).
    ``validation_prompt_ids`` fixes the validation split (e.g. the demo's held-out prompts) instead of a
    seeded ``val_fraction`` draw.
    """
    attributes = list(attributes)
    k = len(attributes)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weight scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "ratio" and any(r.ratings is None for r in records):
        raise ValueError("scheme 'ratio' (eq. A.2) needs scalar ratings; this data has pairwise labels")
    for r in records:
        if r.ratings is not None and r.ratings.shape != (len(r.responses), k):
            raise DataError(r.source or "record", "ratings", "wrong_type",
                            f"ratings shape {r.ratings.shape} != ({len(r.responses)}, {k})")
    masks = condition_masks(k, scheme)
    filtered: Counter = Counter()

    # ---- length filter
    if template is not None:
        p_len, r_len = token_lengths(records, template)
        total = [p + r for p, r in zip(p_len, r_len)]
        sft_ok = [t <= max_length_sft if max_length_sft else np.ones(len(t), bool) for t in total]
        pair_ok = [t <= max_length_pairs if max_length_pairs else np.ones(len(t), bool) for t in total]
        filtered["sft_rows_over_max_length_sft"] = int(sum((~m).sum() for m in sft_ok))
        filtered["responses_over_max_length_pairs"] = int(sum((~m).sum() for m in pair_ok))
    else:
        sft_ok = pair_ok = [np.ones(len(r.responses), bool) for r in records]

    # ---- pairs and conditions
    full = build_pair_table(records, k) if template is not None else None
    table = build_pair_table(records, k, eligible=pair_ok)
    if full is not None:
        filtered["ordered_pairs_removed_by_length"] = len(full) - len(table)
    a_rows, a_attr, a_margin = attribute_pairs(table)
    c_rows, c_masks, c_margin = conditions(table, masks, k, select=select, off_target_penalty=off_target_penalty)
    if full is not None:
        n_all = len(conditions(full, masks, k, select=select, off_target_penalty=off_target_penalty)[0]) if len(full) != len(table) else len(c_rows)
        filtered["conditioned_removed_by_length"] = n_all - len(c_rows)
    lam = weights(c_masks, k, scheme, *( (table.chosen_ratings[c_rows], table.rejected_ratings[c_rows])
                                         if scheme == "ratio" else (None, None)))

    # ---- split
    val_ids = (set(validation_prompt_ids) if validation_prompt_ids is not None
               else split_prompts([r.prompt_id for r in records], val_fraction, seed))
    rec_val = np.array([r.prompt_id in val_ids for r in records], dtype=bool)

    # ---- datasets
    names = np.array(attributes, dtype=object)
    pids = [r.prompt_id for r in records]
    sft_rec, sft_resp = zip(*[(i, j) for i, r in enumerate(records) for j in range(len(r.responses))
                              if sft_ok[i][j]]) if records else ((), ())
    sft_rec, sft_resp = np.asarray(sft_rec, dtype=np.int64), np.asarray(sft_resp, dtype=np.int64)

    def rating_json(i, j):
        r = records[i]
        d = {} if r.ratings is None else {a: (None if np.isnan(v) else round(float(v), 6))
                                          for a, v in zip(attributes, r.ratings[j])}
        if r.info:
            d.update(r.info[j])
        return json.dumps(d, ensure_ascii=False)

    sft = _dataset_dict("sft", {
        "prompt_id": [pids[i] for i in sft_rec], "prompt": [records[i].prompt for i in sft_rec],
        "response": [records[i].responses[j] for i, j in zip(sft_rec, sft_resp)],
        "ratings": [rating_json(i, j) for i, j in zip(sft_rec, sft_resp)],
        "finished": [records[i].is_finished(j) for i, j in zip(sft_rec, sft_resp)]}, rec_val[sft_rec])

    def pair_cols(rows):
        rec, c, r = table.rec[rows], table.c[rows], table.r[rows]
        return rec, {"prompt_id": [pids[i] for i in rec], "prompt": [records[i].prompt for i in rec],
                     "chosen": [records[i].responses[j] for i, j in zip(rec, c)],
                     "rejected": [records[i].responses[j] for i, j in zip(rec, r)],
                     "chosen_finished": [records[i].is_finished(j) for i, j in zip(rec, c)],
                     "rejected_finished": [records[i].is_finished(j) for i, j in zip(rec, r)]}

    rec, cols = pair_cols(a_rows)
    pairs = _dataset_dict("pairs", {**cols, "attribute": list(names[a_attr]), "margin": a_margin}, rec_val[rec])
    bits = mask_bits(c_masks, k).astype(bool)
    rec, cols = pair_cols(c_rows)
    conditioned = _dataset_dict("conditioned", {**cols, "weights": lam,
                                                "condition": [list(names[b]) for b in bits],
                                                "margin": c_margin}, rec_val[rec])

    # ---- stats
    sizes = Counter(bits.sum(1).tolist())
    hist = Counter(tuple(round(float(x), 4) for x in w) for w in lam)
    stats = {
        "rows": row_stats.as_dict() if row_stats is not None else None,
        "records": {"prompts": len(records), "responses": int(sum(len(r.responses) for r in records)),
                    "prompts_with_2plus_responses": int(sum(len(r.responses) >= 2 for r in records))},
        "filtered": dict(filtered),
        "ordered_pairs_with_a_win": len(table),
        "pairs_per_attribute": {a: int((a_attr == j).sum()) for j, a in enumerate(attributes)},
        "conditions_per_subset_size": {str(s): int(n) for s, n in sorted(sizes.items())},
        "weight_histogram": [{"weights": list(w), "count": n} for w, n in hist.most_common(64)],
        "distinct_weight_vectors": len(hist),
        "splits": {kind: {s: len(d.__getitem__(s)) for s in SPLITS}
                   for kind, d in (("sft", sft), ("pairs", pairs), ("conditioned", conditioned))},
        "prompts_per_split": {"train": int((~rec_val).sum()), "validation": int(rec_val.sum())},
    }
    meta = {"attributes": attributes, "scheme": scheme, "select": select, "off_target_penalty": off_target_penalty,
            "template": template.spec if template is not None else None,
            "source": source or {}, "seed": seed, "val_fraction": val_fraction,
            "max_length_sft": max_length_sft if template is not None else None,
            "max_length_pairs": max_length_pairs if template is not None else None,
            "likert": [0.0, 4.0]}
    return PreparedData(meta, stats, sft, pairs, conditioned)


# --------------------------------------------------------------------------- command


def add_arguments(p) -> None:
    from cmpo.data.formats import FORMATS

    p.add_argument("--format", required=True, choices=list(FORMATS), help="source format")
    p.add_argument("--data", required=True, help="local .jsonl/.json/.parquet/.csv file or folder, or a hub id")
    p.add_argument("--split", default=None, help="hub split to read (default: train)")
    p.add_argument("--attributes", default=None,
                   help="comma-separated attributes, in λ order (default: the format's usual set)")
    p.add_argument("--scheme", default="powerset", choices=SCHEMES, help="weight scheme (default: powerset)")
    p.add_argument("--select", default="best", choices=("best", "all"),
                   help="per prompt and condition keep the greatest-net-margin pair (best) or all pairs")
    p.add_argument("--off-target-penalty", type=float, default=0.0, metavar="RHO",
                   help="with --select best, rank pairs by margin on the condition minus RHO x margin on the "
                        "other attributes (prefer pairs that differ only where the condition says; default 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--model", default="smollm2-135m",
                   help="tokenizer for the length filter: short name, hub id or dir; 'none' skips the filter")
    p.add_argument("--template", default="auto", help="auto | chat | thesis | jinja:<file|template>")
    p.add_argument("--max-length-sft", type=int, default=2048, help="max prompt+response tokens for SFT rows")
    p.add_argument("--max-length-pairs", type=int, default=512, help="max prompt+response tokens in pairs")
    p.add_argument("--val-fraction", type=float, default=0.05, help="fraction of prompts for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--on-bad-row", default="error", choices=("error", "skip"),
                   help="stop at the first bad row (error) or skip and count it (skip)")
    p.add_argument("--safety-filter", default="different", choices=("different", "none"),
                   help="pku-saferlhf: keep only pairs whose responses differ in safety label (thesis) or all")


def run(args) -> int:
    from cmpo.data.formats import read

    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else None
    stats = RowStats(args.on_bad_row)
    try:
        records, attributes = read(args.format, args.data, attributes, stats, split=args.split,
                                   safety_filter=args.safety_filter)
    except DataError as e:
        print(f"error: {e}\n(use --on-bad-row skip to skip and count bad rows)")
        return 2
    template = None
    if args.model.lower() != "none":
        from cmpo.data.templates import PromptTemplate
        from cmpo.models.loading import load_tokenizer

        template = PromptTemplate.resolve(args.template, load_tokenizer(args.model))
    source = {"format": args.format, "data": str(args.data), "split": args.split, "model": args.model,
              "safety_filter": args.safety_filter if args.format in ("pku-saferlhf", "beavertails") else None}
    data = prepare(records, attributes, args.scheme, template, max_length_sft=args.max_length_sft,
                   max_length_pairs=args.max_length_pairs, val_fraction=args.val_fraction, seed=args.seed,
                   select=args.select, off_target_penalty=args.off_target_penalty, row_stats=stats, source=source)
    data.save(args.out, overwrite=args.overwrite)
    print(summary(data.stats, data.meta))
    print(f"wrote {args.out}")
    return 0


def summary(stats: dict, meta: dict) -> str:
    """A plain-text table of the stats."""
    lines = [f"attributes: {', '.join(meta['attributes'])}   scheme: {meta['scheme']}   template: {meta['template']}"]
    rows = stats.get("rows") or {}
    if rows:
        lines.append(f"rows read {rows['read']:>9}   used {rows['used']:>9}")
        for group in ("rejected", "filtered"):
            for k, v in rows[group].items():
                lines.append(f"  {group:<9} {k:<40} {v:>9}")
    for k, v in stats["filtered"].items():
        lines.append(f"  filtered  {k:<40} {v:>9}")
    lines.append(f"prompts {stats['records']['prompts']}  responses {stats['records']['responses']}")
    lines.append(f"{'':<14}{'train':>10}{'validation':>12}")
    for kind, d in stats["splits"].items():
        lines.append(f"{kind:<14}{d['train']:>10}{d['validation']:>12}")
    lines.append("pairs per attribute: " + ", ".join(f"{a} {n}" for a, n in stats["pairs_per_attribute"].items()))
    lines.append("conditions per |S|:  " + ", ".join(f"{s}: {n}" for s, n in stats["conditions_per_subset_size"].items()))
    return "\n".join(lines)
