"""Conversion speed of the data pipeline (not a test). Prints one JSON line per stage.

    python benchmarks/bench_prepare.py [--prompts 100000] [--responses 4] [--attributes 9] [--model tiny-random]

Stages: build_pair_table + conditions (powerset, best margin) on random 0–4 ratings, then tokenization
throughput (prompt + response lengths through the template) on a sample.
"""

import argparse
import json
import time

import numpy as np

from cmpo.data.pairs import attribute_pairs, build_pair_table, conditions
from cmpo.data.records import Record
from cmpo.data.weights import condition_masks, weights


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--responses", type=int, default=4)
    ap.add_argument("--attributes", type=int, default=9)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--tokenize-prompts", type=int, default=2000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    P, n, k = a.prompts, a.responses, a.attributes
    R = rng.integers(0, 5, (P, n, k)).astype(np.float32)
    records = [Record([{"role": "user", "content": f"prompt {i}"}], [f"response {i}.{j}" for j in range(n)],
                      ratings=R[i], prompt_id=f"{i:016x}") for i in range(P)]
    t0 = time.perf_counter()
    table = build_pair_table(records, k)
    t1 = time.perf_counter()
    attribute_pairs(table)
    rows, masks, _ = conditions(table, condition_masks(k, "powerset"), k)
    weights(masks, k, "powerset")
    t2 = time.perf_counter()
    print(json.dumps({"stage": "conversion", "prompts": P, "responses": n, "attributes": k,
                      "ordered_pairs": len(table), "conditioned_rows": len(rows),
                      "seconds_pair_table": round(t1 - t0, 3), "seconds_conditions": round(t2 - t1, 3),
                      "seconds": round(t2 - t0, 3), "prompts_per_s": round(P / (t2 - t0), 1)}))
    from cmpo.data.prepare import token_lengths
    from cmpo.data.templates import PromptTemplate
    from cmpo.models.loading import load_tokenizer

    template = PromptTemplate.resolve("auto", load_tokenizer(a.model))
    sample = records[: a.tokenize_prompts]
    t0 = time.perf_counter()
    token_lengths(sample, template)
    dt = time.perf_counter() - t0
    print(json.dumps({"stage": "tokenization", "model": a.model, "prompts": len(sample),
                      "responses": len(sample) * n, "seconds": round(dt, 3),
                      "responses_per_s": round(len(sample) * n / dt, 1)}))


if __name__ == "__main__":
    main()
