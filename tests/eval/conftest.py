"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted judge answers (for the judge client tests).

Policy, read from the two responses in the Table A.2 prompt:
  ``score=N`` in each response    → answers "[1] …" / "[2] …" / "[0] …" by the higher score
  ``MALFORMED`` in either         → an unparseable answer
  ``BIASED`` in either            → always "1" (a position-biased judge)
  ``FAIL500`` in either           → the first 2 requests for that prompt get HTTP 500
  ``SLOW`` in either              → the first request for that prompt sleeps past the client timeout
Every request takes ``delay`` seconds so concurrent requests overlap; the server records the maximum number
of requests in flight, every request body, and the number of requests.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class ScriptedJudgeServer:
    def __init__(self, delay: float = 0.05, slow: float = 2.0):
        self.delay, self.slow = delay, slow
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.seen = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.bodies.append(body)
                try:
                    status, payload, sleep = server.answer(self.path, body)
                    time.sleep(sleep)
                    data = json.dumps(payload).encode()
                    try:
                        self.send_response(status)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                    except (BrokenPipeError, ConnectionResetError):  # the client timed out
                        pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.bodies)

    def answer(self, path: str, body: dict):
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}"}}, 0
        content = body["messages"][-1]["content"]
        m = re.search(r"### Response 1\n(.*?)\n\n### Response 2\n(.*?)\n\n### Instructions", content, re.DOTALL)
        r1, r2 = m.group(1), m.group(2)
        with self.lock:
            self.seen[content] += 1
            count = self.seen[content]
        both = r1 + r2
        if "FAIL500" in both and count <= 2:
            return 500, {"error": {"message": "injected failure", "type": "server_error"}}, self.delay
        sleep = self.slow if ("SLOW" in both and count == 1) else self.delay
        if "MALFORMED" in both:
            text = "I think the first one"
        elif "BIASED" in both:
            text = "1"
        else:
            s1 = int(re.search(r"score=(\d+)", r1).group(1))
            s2 = int(re.search(r"score=(\d+)", r2).group(1))
            text = "[1] Response 1 is better" if s1 > s2 else ("[2] Response 2" if s2 > s1 else "[0] Equal")
        payload = {
            "id": f"chatcmpl-{count}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(content.split()), "completion_tokens": 3,
                      "total_tokens": len(content.split()) + 3},
        }
        return 200, payload, sleep

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def judge_server():
    with ScriptedJudgeServer() as server:
        yield server
