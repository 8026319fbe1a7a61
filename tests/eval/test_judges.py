import pytest

from cmpo.eval.judges import (
    JUDGE_TEMPLATE,
    OpenAIJudge,
    ScorerJudge,
    combine_orders,
    parse_answer,
    render_judge_prompt,
)
from cmpo.eval.raters import RuleScorer


@pytest.mark.parametrize("text,expect", [
    ("1", 1), ("[2] Response 2 is better", 2), (" 0.", 0), ("(1) yes", 1), ("**2**", 2),
    ("10", None), ("3", None), ("Response 1", None), ("", None), (None, None), ("1st", None),
])
def test_parse_answer(text, expect):
    assert parse_answer(text) == expect


def test_combine_orders_counts_disagreement_as_tie():
    assert combine_orders(1, 2) == 1  # A first then A second: A wins both times
    assert combine_orders(2, 1) == -1
    assert combine_orders(1, 1) == 0  # position bias: always "Response 1"
    assert combine_orders(0, 0) == 0 and combine_orders(1, 0) == 0
    assert combine_orders(None, 1) is None


def test_prompt_is_the_thesis_template():
    text = render_judge_prompt([{"role": "user", "content": "Tell a joke"}], "A", "B", "humor")
    assert text.startswith("### Prompt\nTell a joke\n\n### Response 1\nA\n\n### Response 2\nB\n\n### Instructions\n")
    assert "If Response 1 is more humorous than Response 2, answer with 1." in text
    assert text.endswith("Remember that your answer must be one of 0, 1 or 2!")
    assert JUDGE_TEMPLATE.count("{attribute}") == 4


def _judge(server, tmp_path, **kw):
    opts = {"model": "judge-test", "base_url": server.base_url, "api_key": "k", "cache": tmp_path / "cache.sqlite",
                "concurrency": 3, "backoff": 0.01, "timeout": 1.0}
    opts.update(kw)
    return OpenAIJudge(**opts)


def test_openai_judge_against_real_server(judge_server, tmp_path):
    judge = _judge(judge_server, tmp_path)
    prompts = ["p0", "p1", "p2", "p3", "p4", "p5"]
    a = ["score=3", "score=1", "score=2", "score=1 MALFORMED", "score=5 BIASED", "score=4 FAIL500"]
    b = ["score=1", "score=3", "score=2", "score=2", "score=1", "score=2"]
    verdicts = judge.compare(prompts, a, b, "helpfulness")
    assert [v.outcome for v in verdicts] == [1, -1, 0, None, 0, 1]
    assert verdicts[4].answers == [1, 1]  # both orders said "Response 1": disagreement -> tie
    assert verdicts[3].answers == [None, None]
    body = judge_server.bodies[0]
    assert body["temperature"] == 0 and body["max_tokens"] == 10 and body["model"] == "judge-test"
    # 12 answered calls + 2 x 2 injected 500s (both orders of the FAIL500 row) retried
    assert judge.usage.completed == 12 and judge.usage.retries == 4 and judge_server.requests == 16
    assert judge.usage.prompt_tokens > 0 and judge.usage.completion_tokens == 36
    assert judge_server.max_in_flight <= 3

    before = judge_server.requests
    again = _judge(judge_server, tmp_path)  # a fresh client on the same cache file: zero new requests
    verdicts2 = again.compare(prompts, a, b, "helpfulness")
    assert [v.outcome for v in verdicts2] == [v.outcome for v in verdicts]
    assert judge_server.requests == before and again.usage.cache_hits == 12 and again.usage.requests == 0
    # another attribute is another question
    again.judge("p0", "score=3", "score=1", "humor")
    assert judge_server.requests == before + 2


def test_concurrency_limit_respected(judge_server, tmp_path):
    judge = _judge(judge_server, tmp_path, concurrency=2, cache=None)
    n = 8
    verdicts = judge.compare([f"q{i}" for i in range(n)], ["score=2"] * n, ["score=1"] * n, "humor")
    assert all(v.outcome == 1 for v in verdicts) and judge_server.requests == 2 * n
    assert judge_server.max_in_flight == 2  # requests overlap up to the limit, never more


def test_timeouts_are_retried(judge_server, tmp_path):
    judge = _judge(judge_server, tmp_path, concurrency=4, cache=None, timeout=0.5)
    n = 2
    verdicts = judge.compare([f"q{i}" for i in range(n)], ["score=2 SLOW"] * n, ["score=1"] * n, "humor")
    assert all(v.outcome == 1 for v in verdicts)
    assert judge.usage.retries == 2 * n and judge.usage.completed == 2 * n  # each first attempt timed out


def test_retries_exhausted_is_invalid_not_a_crash(judge_server, tmp_path):
    judge = _judge(judge_server, tmp_path, max_retries=1, both_orders=False)
    v = judge.judge("p", "score=1 FAIL500", "score=0", "humor")
    assert v.outcome is None and v.raw == ["<failed>"] and judge.usage.failures == 1
    assert len(judge.cache) == 0  # failures are not cached


def test_scorer_judge_with_rule_raters():
    judge = ScorerJudge(RuleScorer())
    verdicts = judge.compare(["p"] * 3, ["Wow!!", "ok", "ok!"], ["ok", "Yes!", "fine!"], "enthusiasm")
    assert [v.outcome for v in verdicts] == [1, -1, 0]
    assert verdicts[0].answers == [2.0, 0.0]
