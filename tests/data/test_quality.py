"""is_degenerate and prose_score: the text checks behind the degenerate guard and the on-policy negatives."""

import pytest

from cmpo.data.quality import is_degenerate, prose_score


@pytest.mark.parametrize("text, bad", [
    ("Gravity is the force that pulls masses together.", False),
    ("- apples\n- pears\n- plums", False),
    ("Wow! That's great!!! Let's go!", False),
    ("113.1\n\n-113.1\n\n-113.1\n\n-113.1", True),    # a structure-rater hack seen in the demo
    ("1\n-1\n-1", True),
    ("", True),
    ("the cat sat the cat sat the cat sat the cat sat", True),  # 3 distinct of 10 bigrams
    ("Dear Sarah,\n\nDear Emily,\n\nDear Sarah,\n\nDear Emily,\n\nDear Sarah,", True),  # a demo greedy loop
    ("1.1.1.1.1.1.1.1", True),
    ("one two three four five six seven eight", False),
])
def test_degenerate_output_guard(text, bad):
    assert is_degenerate(text) is bad


@pytest.mark.parametrize("text, score", [
    ("Gravity pulls masses together.", 26 / 27),  # 26 letters of 27 non-space characters; 2 distinct bigrams
    ("1. Tea\n2. Milk\n- Sugar", 1.0),  # list markers are formatting: a clean list scores like prose
    ("**Bold** tea", 1.0),  # markdown emphasis too
    ("1. 1.1.1: Use a wet cloth", 12 / 18),  # a near-loop the guard lets through: "1.1.1:" is 6 of 18 characters
    ("a b a b a b", 2 / 5),  # 2 distinct of 5 word bigrams, all letters
    ("", 0.0),
    ("1.\n2.", 0.0),  # nothing left once the (marker-less) digits are kept: "1." and "2." are not markers
])
def test_prose_score_by_hand(text, score):
    assert prose_score(text) == pytest.approx(score)
