"""is_degenerate: the text check behind the degenerate guard and the on-policy negatives."""

import pytest

from cmpo.data.quality import is_degenerate


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
