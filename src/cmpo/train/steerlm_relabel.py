"""``cmpo steerlm relabel``: rate every sft response for every attribute with a trained APM.

Output: a prepared-data directory (``meta.json`` + ``sft/``) whose ``ratings`` are complete attribute vectors of
integer Likert classes (the APM's argmax class for classification, the rounded clipped score for regression);
the original ratings are kept in ``ratings_original`` and the APM's expected scores in ``apm_scores`` [k].

Resumable: rows are scored in fixed shards of ``shard_size`` rows and each finished shard is written atomically
to ``<out>.partial/<split>/shard-<index>.json``; a rerun skips finished shards, so an interrupted run neither
loses nor duplicates rows. ``<out>.partial/progress.json`` pins what the shards belong to (APM, data, shard size):
a rerun with different inputs is refused. The final directory is written to a temp dir and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fingerprint(apm_dir: Path, data_dir: Path, dd, splits, shard_size: int) -> dict:
    files = sorted(p for p in apm_dir.iterdir() if p.suffix in (".json", ".safetensors"))
    return {
        "apm": str(apm_dir.resolve()),
        "apm_files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
        "data": str(data_dir.resolve()),
        "splits": {s: {"rows": len(dd[s]), "fingerprint": dd[s]._fingerprint} for s in splits},
        "shard_size": shard_size,
    }


def relabel(apm_dir, data_dir, out, batch_size: int = 16, shard_size: int = 256, splits: list[str] | None = None,
            device=None, dtype: str = "float32", apm=None, progress: bool = True) -> Path:
    """APM-label every row of ``data_dir/sft`` (the chosen splits) -> ``out`` (see module doc). Returns ``out``.

    ``apm``: an already loaded :class:`~cmpo.train.steerlm_apm.APM` (else loaded from ``apm_dir``).
    """
    from datasets import DatasetDict
    from tqdm.auto import tqdm

    from cmpo.train.data import load_split
    from cmpo.train.steerlm_apm import APM

    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1 (got {shard_size}, {batch_size})")
    apm_dir, data_dir, out = Path(apm_dir), Path(data_dir), Path(out)
    if out.resolve() == data_dir.resolve():
        raise ValueError(f"--out {out} must differ from --data {data_dir}")
    dd, meta = load_split(data_dir, "sft")
    splits = list(splits or dd.keys())
    for s in splits:
        if s not in dd:
            raise ValueError(f"{data_dir}/sft has no split {s!r} (has {list(dd)})")
        for col in ("prompt", "response"):
            if col not in dd[s].column_names:
                raise ValueError(f"{data_dir}/sft/{s}: missing field {col!r}")
    apm = apm or APM.load(apm_dir, dtype=dtype, device=device)
    attributes = apm.attributes
    work = Path(str(out) + ".partial")
    fp = _fingerprint(apm_dir, data_dir, dd, splits, shard_size)
    progress_file = work / "progress.json"
    if progress_file.exists():
        old = json.loads(progress_file.read_text())
        if old != fp:
            raise ValueError(f"{work} holds an unfinished relabel of different inputs (APM, data or shard size "
                             f"changed); delete it to start over")
    else:
        _write_json_atomic(progress_file, fp)

    for s in splits:
        ds = dd[s]
        n_shards = math.ceil(len(ds) / shard_size)
        todo = [i for i in range(n_shards) if not (work / s / f"shard-{i:06d}.json").exists()]
        done_rows = len(ds) - sum(min(shard_size, len(ds) - i * shard_size) for i in todo)
        bar = tqdm(total=len(ds), initial=done_rows, desc=f"relabel {s}", unit="row", disable=not progress)
        for i in todo:
            lo, hi = i * shard_size, min(len(ds), (i + 1) * shard_size)
            rows = ds.select(range(lo, hi))
            pred = apm.predict(rows["prompt"], rows["response"], batch_size=batch_size)
            labels = pred.probs.argmax(-1).tolist()
            _write_json_atomic(work / s / f"shard-{i:06d}.json",
                               {"start": lo, "stop": hi, "labels": labels, "scores": pred.scores.tolist()})
            bar.update(hi - lo)
        bar.close()

    result = {}
    for s in splits:
        ds = dd[s]
        labels, scores = [], []
        for i in range(math.ceil(len(ds) / shard_size)):
            shard = json.loads((work / s / f"shard-{i:06d}.json").read_text())
            if shard["start"] != len(labels) or len(shard["labels"]) != shard["stop"] - shard["start"]:
                raise ValueError(f"{work}/{s}/shard-{i:06d}.json does not continue row {len(labels)}; "
                                 f"delete {work} to start over")
            labels += shard["labels"]
            scores += shard["scores"]
        if len(labels) != len(ds):
            raise ValueError(f"{work}/{s}: {len(labels)} rows labelled but the split has {len(ds)}")
        ratings = [json.dumps(dict(zip(attributes, row))) for row in labels]
        drop = [c for c in ("apm_scores",) if c in ds.column_names]
        if "ratings" in ds.column_names:  # keep the human ratings (a relabelled input already has them)
            if "ratings_original" in ds.column_names:
                drop.append("ratings")
            else:
                ds = ds.rename_column("ratings", "ratings_original")
        ds = ds.remove_columns(drop)
        result[s] = ds.add_column("ratings", ratings).add_column("apm_scores", scores)

    new_meta = dict(meta)
    new_meta["attributes"] = list(attributes)
    new_meta["steerlm_relabel"] = {"apm": str(apm_dir), "source": str(data_dir), "splits": splits,
                                   "objective": apm.meta.get("objective")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        DatasetDict(result).save_to_disk(str(tmp / "sft"))
        (tmp / "meta.json").write_text(json.dumps(new_meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return out
