"""Feedback records -> per-attribute preference pairs -> λ-conditioned pairs (thesis §3.2.2, §5.1.1).

All candidate pairs of a dataset live in one :class:`PairTable` (numpy, one row per ordered pair (c, r) of
responses to the same record, c ≠ r) with ``diff[N, k]``:

  scalar ratings   diff_j = f_j(y_c) − f_j(y_r)          (NaN if either is not rated)
  pairwise labels  diff_j = #(c ≻_j r) − #(r ≻_j c)     (NaN if the pair is not labelled on j)

y_c ≻_j y_r ⇔ diff_j > 0 (ties and NaN are no preference). ``win`` is the bitmask of those j. A condition S
(bitmask) is valid for the pair iff S ⊆ win, i.e. y_c is strictly better on every attribute in S. Its net
margin is Σ_{j∈S} diff_j. With ``select="best"`` each (record, S) keeps only the valid pair of greatest net
margin (ties: the first pair in (c, r) order); ``select="all"`` keeps every valid (pair, S).

``off_target_penalty`` ρ > 0 (cmpo's option, not the thesis's) ranks the valid pairs of (record, S) by
Σ_{j∈S} diff_j − ρ·Σ_{j∉S} diff_j instead: among pairs that win on S, prefer those whose chosen response is
*not* also better elsewhere, so condition S is not taught a correlated attribute (e.g. "enthusiastic" answers
that are also the short ones teaching the enthusiasm condition to be short).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cmpo.data.records import Record
from cmpo.data.weights import mask_bits


@dataclass
class PairTable:
    rec: np.ndarray                      # [N] int64 record index (sorted, then c, then r)
    c: np.ndarray                        # [N] int32 chosen response index within the record
    r: np.ndarray                        # [N] int32 rejected response index
    diff: np.ndarray                     # [N, k] float32
    win: np.ndarray                      # [N] int64 bitmask of attributes with diff > 0
    chosen_ratings: np.ndarray | None    # [N, k] float32 (scalar records; NaN rows for pairwise ones)
    rejected_ratings: np.ndarray | None

    def __len__(self) -> int:
        return len(self.rec)


def win_masks(diff: np.ndarray) -> np.ndarray:
    k = diff.shape[1]
    with np.errstate(invalid="ignore"):
        return ((diff > 0).astype(np.int64) << np.arange(k, dtype=np.int64)).sum(1)


def build_pair_table(records: Sequence[Record], k: int, eligible: Sequence[np.ndarray] | None = None) -> PairTable:
    """Every ordered pair (c, r) with at least one strict win. ``eligible[i]``: bool ``[n_i]`` responses that
    may appear in pairs (e.g. after the length filter)."""
    parts = []
    by_n: dict[int, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        if rec.ratings is not None:
            by_n[len(rec.responses)].append(i)
    for n, idx in by_n.items():  # scalar: vectorised per response count
        if n < 2:
            continue
        idx = np.asarray(idx)
        R = np.stack([records[i].ratings for i in idx]).astype(np.float32)            # [G, n, k]
        ii, jj = np.nonzero(~np.eye(n, dtype=bool))                                    # ordered pairs
        ok = np.ones((len(idx), len(ii)), dtype=bool)
        if eligible is not None:
            E = np.stack([eligible[i] for i in idx])
            ok = E[:, ii] & E[:, jj]
        rc, rr = R[:, ii].reshape(-1, k), R[:, jj].reshape(-1, k)
        parts.append((np.repeat(idx, len(ii)), np.tile(ii, len(idx)), np.tile(jj, len(idx)), rc - rr, rc, rr,
                      ok.reshape(-1)))
    for i, rec in enumerate(records):  # pairwise labels: small loops
        if rec.ratings is not None or not rec.prefs:
            continue
        n = len(rec.responses)
        D = np.zeros((n, n, k), dtype=np.float32)
        L = np.zeros((n, n, k), dtype=bool)
        for w, lo, a in rec.prefs:
            D[w, lo, a] += 1
            D[lo, w, a] -= 1
            L[w, lo, a] = L[lo, w, a] = True
        ii, jj = np.nonzero(~np.eye(n, dtype=bool))
        ok = np.ones(len(ii), dtype=bool) if eligible is None else eligible[i][ii] & eligible[i][jj]
        nan = np.full((len(ii), k), np.nan, dtype=np.float32)
        parts.append((np.full(len(ii), i), ii, jj, np.where(L, D, np.nan)[ii, jj].astype(np.float32), nan, nan, ok))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        z = np.zeros((0, k), dtype=np.float32)
        return PairTable(empty, empty.astype(np.int32), empty.astype(np.int32), z, empty, z, z)
    rec, c, r, diff, rc, rr, ok = (np.concatenate(x) for x in zip(*parts))
    win = win_masks(diff)
    keep = ok & (win != 0)
    rec, c, r, diff, rc, rr, win = rec[keep], c[keep], r[keep], diff[keep], rc[keep], rr[keep], win[keep]
    order = np.lexsort((r, c, rec))
    scalar = any(x.ratings is not None for x in records)
    return PairTable(rec[order].astype(np.int64), c[order].astype(np.int32), r[order].astype(np.int32),
                     diff[order], win[order], rc[order] if scalar else None, rr[order] if scalar else None)


def attribute_pairs(table: PairTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-attribute pairs y_c ≻_a y_r: -> (table rows [P], attribute index [P], margin diff_a [P])."""
    with np.errstate(invalid="ignore"):
        rows, attrs = np.nonzero(table.diff > 0)
    order = np.lexsort((rows, attrs))  # grouped by attribute, then table order
    rows, attrs = rows[order], attrs[order]
    return rows, attrs, table.diff[rows, attrs]


def _submask_indices(w: int, masks: np.ndarray, index: np.ndarray, singletons: bool) -> np.ndarray:
    """Indices (into ``masks``) of the candidate conditions S ⊆ w, ascending."""
    if singletons:
        out = [index[1 << j] for j in range(w.bit_length()) if (w >> j) & 1]
    else:
        out, sub = [], w
        while sub:
            out.append(index[sub])
            sub = (sub - 1) & w
    out = np.asarray([i for i in out if i >= 0], dtype=np.int64)
    out.sort()
    return out


def conditions(table: PairTable, masks: np.ndarray, k: int, select: str = "best", off_target_penalty: float = 0.0,
               chunk_elems: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid (pair, condition) combinations -> (table rows [E], condition masks [E], net margin [E]).

    ``off_target_penalty`` ρ (``best`` only): select by Σ_{j∈S} diff_j − ρ·Σ_{j∉S} diff_j; the returned
    margin is still the net margin Σ_{j∈S} diff_j of the selected pair.

    Each pair only enumerates the subsets of its own ``win`` (2^m − 1 for m wins), grouped by ``win`` so the
    margins are one matmul per distinct ``win``. Output is ordered by record, then condition (order of
    ``masks``), then (``all``) pair.
    """
    if select not in ("best", "all"):
        raise ValueError(f"select must be 'best' or 'all', got {select!r}")
    if off_target_penalty < 0:
        raise ValueError(f"off_target_penalty must be >= 0, got {off_target_penalty}")
    if off_target_penalty and select != "best":
        raise ValueError("off_target_penalty ranks pairs for select='best'; select='all' keeps every pair")
    masks = np.asarray(masks, dtype=np.int64)
    M, N = len(masks), len(table)
    if N == 0 or M == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    index = np.full(1 << k, -1, dtype=np.int64)
    index[masks] = np.arange(M)
    singletons = bool(np.all(masks & (masks - 1) == 0))
    bits = mask_bits(masks, k)                                             # [M, k]
    rank_weights = bits - off_target_penalty * (1.0 - bits)                 # [M, k]; = bits when ρ = 0
    diff = np.nan_to_num(table.diff)
    cache: dict[int, np.ndarray] = {}
    rec_starts = np.flatnonzero(np.r_[True, table.rec[1:] != table.rec[:-1]])
    bounds = np.r_[rec_starts, N]
    rank = np.repeat(np.arange(len(rec_starts)), np.diff(bounds))            # row -> record rank
    recs_per_chunk = max(1, chunk_elems // M)
    best_buf = np.empty(recs_per_chunk * M, dtype=np.float32)               # reused: no fresh pages per chunk
    first_buf = np.empty(recs_per_chunk * M, dtype=np.int64)
    out_rows, out_ci, out_margin = [], [], []
    for s in range(0, len(rec_starts), recs_per_chunk):
        e = min(s + recs_per_chunk, len(rec_starts))
        lo, hi = bounds[s], bounds[e]
        uw, inv = np.unique(table.win[lo:hi], return_inverse=True)
        order = np.argsort(inv, kind="stable") + lo
        group_bounds = np.r_[0, np.cumsum(np.bincount(inv, minlength=len(uw)))]
        rows_l, ci_l, s_l = [], [], []
        for g, w in enumerate(uw.tolist()):
            ci = cache.get(w)
            if ci is None:
                ci = cache[w] = _submask_indices(w, masks, index, singletons)
            if not len(ci):
                continue
            rows_g = order[group_bounds[g]:group_bounds[g + 1]]
            rows_l.append(np.repeat(rows_g, len(ci)))
            ci_l.append(np.tile(ci, len(rows_g)))
            s_l.append((diff[rows_g] @ rank_weights[ci].T).ravel())        # ρ = 0: net margin Σ_{j∈S} diff_j
        if not rows_l:
            continue
        rows, ci, score = np.concatenate(rows_l), np.concatenate(ci_l), np.concatenate(s_l)
        key = (rank[rows] - s) * M + ci                                      # (record in chunk, condition)
        if select == "all":
            o = np.lexsort((rows, key))
            out_rows.append(rows[o]), out_ci.append(ci[o]), out_margin.append(score[o])  # ρ = 0 here: the net margin
            continue
        best, first = best_buf[:(e - s) * M], first_buf[:(e - s) * M]
        best.fill(-np.inf)
        np.maximum.at(best, key, score)
        top = score == best[key]
        first.fill(N)                                                        # lowest row among the best
        np.minimum.at(first, key[top], rows[top])
        sel = np.flatnonzero(first < N)
        picked = first[sel]
        out_rows.append(picked), out_ci.append(sel % M)
        out_margin.append(best[sel].copy() if not off_target_penalty
                          else (diff[picked] * bits[sel % M]).sum(1).astype(np.float32))
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(out_rows).astype(np.int64), masks[np.concatenate(out_ci)],
            np.concatenate(out_margin).astype(np.float32))
