"""`cmpo serve` as a real process on loopback, driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from ._support import ServerProcess

MSG = [{"role": "user", "content": "list two items: bread and milk"}]
SETTINGS = [{"helpfulness": 1.0}, {"humor": 1.0}, {"safety": 1.0}, {"humor": 0.5, "safety": 0.5},
            {"helpfulness": 2.0, "humor": -1.0}, {"helpfulness": 0.2, "humor": 0.3, "safety": 0.5}]


def client(server, key="unused") -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def chat(c: OpenAI, weights, max_tokens=12, **kw):
    return c.chat.completions.create(model="tiny-plural", messages=MSG, max_tokens=max_tokens, temperature=0,
                                     extra_body={"attribute_weights": weights} if weights is not None else None,
                                     **kw)


def test_models_and_health(server):
    c = client(server)
    models = c.models.list().data
    assert [m.id for m in models] == ["tiny-plural"]
    assert models[0].model_extra["attributes"] == ["helpfulness", "humor", "safety"]
    assert models[0].model_extra["default_weights"] == {a: pytest.approx(1 / 3) for a in
                                                        ["helpfulness", "humor", "safety"]}
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_chat_matches_in_process_generation_and_echoes_weights(server, plural_dir):
    from cmpo.serve.generate import GenerationOptions, SteerableModel

    sm = SteerableModel.load(str(plural_dir))
    c = client(server)
    for w in SETTINGS[:3]:
        r = chat(c, w)
        assert r.model_extra["attribute_weights"] == {"helpfulness": 0.0, "humor": 0.0, "safety": 0.0, **w}
        assert r.choices[0].message.content == sm.generate([MSG], weights=w,
                                                           options=GenerationOptions(max_new_tokens=12))[0]
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens <= 12
    default = chat(c, None)
    assert default.model_extra["attribute_weights"] == {a: pytest.approx(1 / 3) for a in sm.attributes}
    assert default.choices[0].message.content == sm.generate([MSG], options=GenerationOptions(max_new_tokens=12))[0]


def test_streaming_equals_non_streaming(server):
    c = client(server)
    for w in SETTINGS[:2]:
        full = chat(c, w).choices[0].message.content
        pieces, finish, echoed = [], None, None
        for chunk in chat(c, w, stream=True):
            echoed = chunk.model_extra["attribute_weights"]
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert "".join(pieces) == full and len(pieces) > 1
        assert finish in ("stop", "length")
        assert echoed == {"helpfulness": 0.0, "humor": 0.0, "safety": 0.0, **w}


def test_completions_endpoint(server):
    c = client(server)
    r = c.completions.create(model="tiny-plural", prompt="hello there", max_tokens=8, temperature=0,
                             extra_body={"attribute_weights": {"humor": 1}})
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny-plural", prompt="hello there", max_tokens=8, temperature=0, stream=True,
        extra_body={"attribute_weights": {"humor": 1}}) if ch.choices)
    assert r.choices[0].text == streamed
    assert r.model_extra["attribute_weights"]["humor"] == 1.0


def test_concurrent_mixed_weights_equal_sequential(server):
    c = client(server)
    sequential = [chat(c, w).choices[0].message.content for w in SETTINGS]
    assert len(set(sequential)) > 1  # the weights really steer
    before = httpx.get(server.url + "/health").json()["batches"]
    with ThreadPoolExecutor(len(SETTINGS)) as pool:
        concurrent = list(pool.map(lambda w: chat(c, w).choices[0].message.content, SETTINGS))
    health = httpx.get(server.url + "/health").json()
    assert concurrent == sequential
    assert health["max_batch_seen"] >= 2, "concurrent requests were not batched together"
    assert health["batches"] - before < len(SETTINGS)


LONG = "bread " * 200
BAD = [  # (raw body, status, param)
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"messages": MSG, "attribute_weights": {"bogus": 1}}), 400, "attribute_weights"),
    ('{"messages": [{"role": "user", "content": "hi"}], "attribute_weights": {"humor": NaN}}', 400,
     "attribute_weights"),
    ('{"messages": [{"role": "user", "content": "hi"}], "attribute_weights": {"humor": Infinity}}', 400,
     "attribute_weights"),
    (json.dumps({"messages": MSG, "attribute_weights": {"humor": 0, "safety": 0}}), 400, "attribute_weights"),
    (json.dumps({"messages": MSG, "attribute_weights": [1, 0, 0]}), 400, "attribute_weights"),
    (json.dumps({"messages": MSG, "attribute_weights": {"humor": "high"}}), 400, "attribute_weights"),
    (json.dumps({"messages": [{"role": "user", "content": LONG}]}), 400, "messages"),
    (json.dumps({"messages": MSG, "max_tokens": "ten"}), 400, "max_tokens"),
    (json.dumps({"messages": MSG, "max_tokens": 10_000}), 400, "max_tokens"),
    (json.dumps({"messages": MSG, "max_tokens": 0}), 400, "max_tokens"),
    (json.dumps({"messages": MSG, "temperature": "hot"}), 400, "temperature"),
    (json.dumps({"messages": MSG, "top_p": 3}), 400, "top_p"),
    (json.dumps({"messages": MSG, "stream": "yes"}), 400, "stream"),
    (json.dumps({"messages": MSG, "stop": 5}), 400, "stop"),
    (json.dumps({"messages": MSG, "n": 2}), 400, "n"),
    (json.dumps({"messages": "hello"}), 400, "messages"),
    (json.dumps({"messages": []}), 400, "messages"),
    (json.dumps({"model": "x"}), 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}), 400, "messages[0].content"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}), 400, "messages[0]"),
    (json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}), 400, "messages"),
    (json.dumps({"messages": MSG, "attributes": {"humor": 4}}), 400, "attributes"),
    (json.dumps({"messages": MSG, "model": 3}), 400, "model"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 30_000}]}), 413, None),
]


@pytest.mark.parametrize("raw,status,param", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_requests_get_openai_errors_and_server_survives(server, raw, status, param):
    r = httpx.post(server.url + "/v1/chat/completions", content=raw,
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    assert server.alive()


def test_bad_completions_and_routes(server):
    for body in ({"prompt": 5}, {"prompt": ""}, {"prompt": "hi", "echo": True},
                 {"prompt": "hi", "attribute_weights": {"humor": -0.0}}):
        r = httpx.post(server.url + "/v1/completions", json=body)
        assert r.status_code == 400 and "error" in r.json(), body
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(server.url + "/v1/chat/completions").status_code == 405
    assert server.alive()


def test_auth_and_queue_limit(plural_dir):
    # The key comes from $CMPO_API_KEY (the --api-key flag feeds the same setting).
    srv = ServerProcess(plural_dir, "--max-queue", "1", "--batch-wait-ms", "800", env={"CMPO_API_KEY": "s3cret"})
    try:
        assert httpx.get(srv.url + "/health").status_code == 200  # health stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSG}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        import openai

        with pytest.raises(openai.AuthenticationError):
            chat(client(srv, "wrong"), {"humor": 1})
        good = client(srv, "s3cret")
        assert chat(good, {"humor": 1}).choices[0].message.content is not None
        # max-queue 1: while one request waits 800 ms for company, a second one is turned away with 429.
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(httpx.post, srv.url + "/v1/chat/completions",
                                   json={"messages": MSG, "max_tokens": 4, "temperature": 0},
                                   headers={"Authorization": "Bearer s3cret"}, timeout=60) for _ in range(2)]
            codes = sorted(f.result().status_code for f in futures)
        assert codes == [200, 429]
        assert srv.alive()
    finally:
        srv.stop()
