import numpy as np

from cmpo.eval.raters import RULE_RATERS, RuleScorer, list_lines


def test_thresholds():
    c, v = RULE_RATERS["conciseness"], RULE_RATERS["verbosity"]
    for words, expect in [(1, 4), (30, 4), (31, 3), (60, 3), (61, 2), (121, 1), (200, 1), (201, 0)]:
        text = " ".join(["w"] * words)
        assert c.rate(text) == expect, words
        assert v.rate(text) == 4 - expect, words
    assert c.rate("short", finished=False) == 0
    assert v.rate("short", finished=False) == 0


def test_structure_and_enthusiasm():
    text = "Intro\n- a\n* b\n1. c\n2) d\n• e\nnot - a list\n-no space"
    assert list_lines(text) == 5
    assert RULE_RATERS["structure"].rate(text) == 4
    assert RULE_RATERS["structure"].rate("- one") == 1
    assert [RULE_RATERS["enthusiasm"].rate("!" * n) for n in range(7)] == [0, 1, 2, 3, 3, 4, 4]


def test_scorer_batches():
    s = RuleScorer()
    out = s.score([None, None], ["Wow!", "Fine."], "enthusiasm")
    assert isinstance(out, np.ndarray) and out.tolist() == [1.0, 0.0]
    assert s.score([None], ["ok"], "conciseness", finished=[False]).tolist() == [0.0]
