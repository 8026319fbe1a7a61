"""Pairs, conditions and weights: hand-computed cases and hypothesis properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpo.data.pairs import attribute_pairs, build_pair_table, conditions
from cmpo.data.prepare import prepare, split_prompts
from cmpo.data.records import Record
from cmpo.data.weights import condition_masks, mask_bits, weights


def _rec(i, ratings):
    ratings = np.asarray(ratings, dtype=np.float32)
    return Record([{"role": "user", "content": f"prompt {i}"}], [f"r{i}-{j}" for j in range(len(ratings))],
                  ratings=ratings)


ratings_st = st.lists(
    st.lists(st.lists(st.one_of(st.integers(0, 4).map(float), st.just(float("nan"))), min_size=3, max_size=3),
             min_size=1, max_size=4),
    min_size=1, max_size=6)


def test_hand_computed_best_margin():
    # y0 = (4, 1), y1 = (2, 0), y2 = (3, 3): wins y0>y1 {a,b}, y2>y1 {a,b}, y0>y2 {a}, y2>y0 {b}
    t = build_pair_table([_rec(0, [[4, 1], [2, 0], [3, 3]])], 2)
    rows, masks, margin = conditions(t, condition_masks(2, "powerset"), 2)
    got = {(int(m), int(t.c[r]), int(t.r[r]), float(g)) for r, m, g in zip(rows, masks, margin)}
    # S={a}: y0>y1 margin 2 (best; y2>y1 1, y0>y2 1). S={b}: y2>y1 3. S={a,b}: y2>y1 1+3=4 beats y0>y1 2+1=3
    assert got == {(1, 0, 1, 2.0), (2, 2, 1, 3.0), (3, 2, 1, 4.0)}
    lam = weights(np.array([1, 2, 3]), 2, "powerset")
    assert lam.tolist() == [[1, 0], [0, 1], [0.5, 0.5]]
    assert weights(np.array([1]), 3, "negative").tolist() == [[1, -0.5, -0.5]]
    ratio = weights(np.array([3]), 2, "ratio", np.array([[3.0, 1.0]]), np.array([[1.0, 0.0]]))
    assert ratio.tolist() == [[1.0, 1.0]]  # (3+1)/(1+1)/2, (1+1)/(0+1)/2


def test_off_target_penalty_prefers_pairs_that_differ_only_on_the_condition():
    # (enthusiasm, conciseness): y0 = (3, 4) short and enthusiastic, y1 = (0, 0) long and plain,
    # y2 = (0, 4) short and plain. S={enth}: y0>y1 (margin 3, conc +4) ties y0>y2 (margin 3, conc 0);
    # ρ = 0 keeps the first (y0>y1), ρ = 0.5 scores them 3 − 2 = 1 vs 3 − 0 = 3 and keeps y0>y2.
    t = build_pair_table([_rec(0, [[3, 4], [0, 0], [0, 4]])], 2)
    masks = np.array([1])
    for rho, want in ((0.0, (0, 1)), (0.5, (0, 2))):
        rows, cm, margin = conditions(t, masks, 2, off_target_penalty=rho)
        assert [(int(t.c[r]), int(t.r[r])) for r in rows] == [want] and margin.tolist() == [3.0]
    # a smaller on-target margin can win when the alternative drags a large off-target win along:
    # y0 = (4, 4) vs y1 = (0, 0): 4 − 0.5·4 = 2;  y2 = (3, 0) vs y1: 3 − 0 = 3 -> y2>y1, margin 3
    t = build_pair_table([_rec(0, [[4, 4], [0, 0], [3, 0]])], 2)
    rows, _, margin = conditions(t, masks, 2, off_target_penalty=0.5)
    assert [(int(t.c[r]), int(t.r[r])) for r in rows] == [(2, 1)] and margin.tolist() == [3.0]
    rows, _, margin = conditions(t, masks, 2)
    assert [(int(t.c[r]), int(t.r[r])) for r in rows] == [(0, 1)] and margin.tolist() == [4.0]
    with pytest.raises(ValueError, match="select='all'"):
        conditions(t, masks, 2, select="all", off_target_penalty=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        conditions(t, masks, 2, off_target_penalty=-1.0)


@settings(max_examples=40, deadline=None)
@given(ratings_st, st.sampled_from([0.25, 0.5, 2.0]))
def test_off_target_penalty_picks_the_best_penalised_score(data, rho):
    k = 3
    records = [_rec(i, r) for i, r in enumerate(data)]
    t = build_pair_table(records, k)
    masks = condition_masks(k, "powerset")
    rows, cm, margin = conditions(t, masks, k, off_target_penalty=rho)
    # the same (record, condition) set as without the penalty: the penalty changes which pair, not whether
    plain_rows, plain_cm, _ = conditions(t, masks, k)
    assert sorted(zip(t.rec[rows].tolist(), cm.tolist())) == sorted(zip(t.rec[plain_rows].tolist(),
                                                                         plain_cm.tolist()))
    bits = mask_bits(masks, k).astype(bool)
    for row, m, g in zip(rows, cm, margin):
        S = bits[list(masks).index(m)]
        raw = records[t.rec[row]].ratings

        def score(i, j, raw=raw, S=S):
            d = np.nan_to_num(raw[i] - raw[j])
            return float(d[S].sum() - rho * d[~S].sum())

        n = len(raw)
        best = max(score(i, j) for i in range(n) for j in range(n)
                   if i != j and np.all(raw[i][S] > raw[j][S]))
        assert score(t.c[row], t.r[row]) == pytest.approx(best, abs=1e-5)
        assert g == pytest.approx(float(np.nan_to_num(raw[t.c[row]] - raw[t.r[row]])[S].sum()), abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(ratings_st, st.sampled_from(["powerset", "onehot", "negative", "ratio"]))
def test_emitted_pairs_are_strictly_better_where_weighted(data, scheme):
    k = 3
    records = [_rec(i, r) for i, r in enumerate(data)]
    t = build_pair_table(records, k)
    masks = condition_masks(k, scheme)
    rows, cm, margin = conditions(t, masks, k)
    lam = weights(cm, k, scheme, t.chosen_ratings[rows], t.rejected_ratings[rows])
    for row, w in zip(rows, lam):
        rc = records[t.rec[row]].ratings[t.c[row]]
        rr = records[t.rec[row]].ratings[t.r[row]]
        assert np.all(rc[w > 0] > rr[w > 0])
    if scheme in ("powerset", "onehot"):
        np.testing.assert_allclose(lam.sum(1), 1.0, rtol=1e-6)
    # per (record, condition) at most one pair, with the largest net margin among valid pairs
    keys = list(zip(t.rec[rows].tolist(), cm.tolist()))
    assert len(keys) == len(set(keys))
    bits = mask_bits(masks, k).astype(bool)
    for (rec, m), g in zip(keys, margin):
        S = bits[list(masks).index(m)]
        best = max(float((records[rec].ratings[i] - records[rec].ratings[j])[S].sum())
                   for i in range(len(records[rec].responses)) for j in range(len(records[rec].responses))
                   if np.all(records[rec].ratings[i][S] > records[rec].ratings[j][S]))
        assert g == pytest.approx(best)
    _, _, pm = attribute_pairs(t)
    assert np.all(pm > 0)


@settings(max_examples=60, deadline=None)
@given(ratings_st)
def test_pair_winning_on_m_attributes_yields_2m_minus_1_conditions(data):
    k = 3
    t = build_pair_table([_rec(i, r) for i, r in enumerate(data)], k)
    rows, _, _ = conditions(t, condition_masks(k, "powerset"), k, select="all")
    counts = np.bincount(rows, minlength=len(t))
    m = mask_bits(t.win, k).sum(1)
    np.testing.assert_array_equal(counts, 2 ** m - 1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=40), st.floats(0, 0.9), st.integers(0, 5))
def test_split_is_by_prompt_and_deterministic(ids, frac, seed):
    val = split_prompts(ids, frac, seed)
    assert val == split_prompts(list(reversed(ids)), frac, seed)
    assert val <= set(ids) and (len(set(ids)) < 2 or len(val) < len(set(ids)))


def test_prepare_same_seed_same_output_and_disjoint_splits():
    rng = np.random.default_rng(0)
    records = [_rec(i, rng.integers(0, 5, (3, 3))) for i in range(40)]
    a = prepare(records, ["x", "y", "z"], val_fraction=0.25, seed=3)
    b = prepare(records, ["x", "y", "z"], val_fraction=0.25, seed=3)
    for kind in ("sft", "pairs", "conditioned"):
        for s in ("train", "validation"):
            assert getattr(a, kind)[s].to_list() == getattr(b, kind)[s].to_list()
        ds = getattr(a, kind)
        assert not set(ds["train"]["prompt_id"]) & set(ds["validation"]["prompt_id"])
    assert a.stats["prompts_per_split"] == {"train": 30, "validation": 10}
    c = a.conditioned["train"][0]
    assert len(c["weights"]) == 3 and abs(sum(c["weights"]) - 1) < 1e-6 and c["condition"]


def test_token_lengths_match_template_encode(tiny_model_dir):
    from cmpo.data.prepare import token_lengths
    from cmpo.data.templates import PromptTemplate
    from cmpo.models.loading import load_tokenizer

    template = PromptTemplate.resolve("auto", load_tokenizer(tiny_model_dir))
    recs = [Record([{"role": "user", "content": "Name a colour."}], ["Red.", "A deep, calm blue!"])]
    p_len, r_len = token_lengths(recs, template)
    for resp, n in zip(recs[0].responses, r_len[0]):
        p_ids, r_ids = template.encode(recs[0].prompt, resp)
        assert (len(p_ids), len(r_ids)) == (p_len[0], n)
    data = prepare([_rec(0, [[4], [0]])], ["x"], template=template, max_length_pairs=1, val_fraction=0)
    assert len(data.conditioned["train"]) == 0 and data.stats["filtered"]["responses_over_max_length_pairs"] == 2
