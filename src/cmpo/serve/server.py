"""``cmpo serve``: an OpenAI-compatible HTTP server with per-request steering, plus the playground page.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (SSE streaming or not),
``GET /health``, ``GET /`` (playground). Extra request fields: ``attribute_weights`` (plural models: object
attribute -> λ_j; missing attributes are 0, absent/null -> the model's default λ) and ``attributes`` (SteerLM
ACM models: attribute -> value). Responses echo the weights used. With the ``openai`` client pass them via
``extra_body={"attribute_weights": {...}}``.

Batching: requests go to one background worker that waits ``batch_wait_ms`` for company, then runs up to
``max_batch`` requests with the same sampling settings in one ``generate`` call, each with its own λ
(per-example weights [B, k]); greedy results equal the one-by-one results. A full queue answers 429.
Errors use OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in route signatures.
import argparse
import asyncio
import contextlib
import hmac
import json
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cmpo.models.steering import SteeringError
from cmpo.serve.generate import GenerationOptions, Row, SteerableModel, format_acm_attributes

PLAYGROUND = Path(__file__).with_name("playground")


@dataclass
class ServerSettings:
    model_name: str = "cmpo"
    api_key: str | None = None
    max_prompt_tokens: int = 2048
    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    max_queue: int = 64
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_body_bytes: int = 1 << 20


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------- batching worker


@dataclass
class Job:
    row: Row
    options: GenerationOptions
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, payload=None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class Batcher:
    """One background thread that runs queued jobs in batches (same sampling settings, any λ)."""

    def __init__(self, model: SteerableModel, settings: ServerSettings):
        self.model, self.settings = model, settings
        self.cv = threading.Condition()
        self.pending: list[Job] = []
        self.running = 0
        self.batches = 0
        self.max_batch_seen = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="cmpo-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.pending) + self.running >= self.settings.max_queue:
                raise APIError(429, f"server busy: {self.settings.max_queue} requests already queued",
                               code="queue_full", type_="rate_limit_error")
            self.pending.append(job)
            self.cv.notify()

    def queued(self) -> int:
        with self.cv:
            return len(self.pending) + self.running

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify()

    def _take(self) -> list[Job]:
        with self.cv:
            while not self.pending and not self.stopped:
                self.cv.wait()
            if self.stopped:
                return []
        time.sleep(self.settings.batch_wait_ms / 1000)  # let concurrent requests join this batch
        with self.cv:
            self.pending = [j for j in self.pending if not j.cancel.is_set()]
            if not self.pending:
                return []
            key = self.pending[0].options.sampling_key()
            batch = [j for j in self.pending if j.options.sampling_key() == key][: self.settings.max_batch]
            taken = set(map(id, batch))
            self.pending = [j for j in self.pending if id(j) not in taken]
            self.running = len(batch)
            return batch

    def _loop(self) -> None:
        while not self.stopped:
            batch = self._take()
            if not batch:
                continue
            self.batches += 1
            self.max_batch_seen = max(self.max_batch_seen, len(batch))
            try:
                self.model.generate_rows([j.row for j in batch], batch[0].options)
                for j in batch:
                    j.emit("done")
            except Exception as e:  # noqa: BLE001 - reported to every client in the batch
                for j in batch:
                    j.emit("error", e)
            finally:
                with self.cv:
                    self.running = 0


# --------------------------------------------------------------------------- request parsing


def _num(body: dict, name: str, default, lo=None, hi=None, integer=False):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise APIError(400, f"'{name}' must be {'an integer' if integer else 'a number'}", param=name,
                       code="invalid_type")
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise APIError(400, f"'{name}' = {v} is out of range [{lo}, {hi}]", param=name, code="invalid_value")
    return v


def parse_options(body: dict, settings: ServerSettings) -> GenerationOptions:
    cap = settings.max_tokens_cap
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = min(settings.default_max_tokens, cap)
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise APIError(400, f"'{param}' must be an integer", param=param, code="invalid_type")
    elif not 1 <= max_tokens <= cap:
        raise APIError(400, f"'{param}' = {max_tokens} must be between 1 and {cap} (the server's cap)",
                       param=param, code="invalid_value")
    temperature = _num(body, "temperature", 1.0, 0, 2)
    top_p = _num(body, "top_p", 1.0, 0, 1)
    top_k = _num(body, "top_k", 0, 0, None, integer=True)
    penalty = _num(body, "repetition_penalty", 1.0, 0.01, 10)
    seed = _num(body, "seed", None, integer=True)
    n = _num(body, "n", 1, 1, 1, integer=True)
    del n  # only n=1 is served
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or any(not isinstance(s, str) or not s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings",
                       param="stop", code="invalid_type")
    if top_p == 0:
        raise APIError(400, "'top_p' must be > 0", param="top_p", code="invalid_value")
    greedy = temperature == 0
    return GenerationOptions(max_new_tokens=max_tokens, do_sample=not greedy,
                             temperature=1.0 if greedy else float(temperature), top_p=float(top_p),
                             top_k=top_k, repetition_penalty=float(penalty), stop=stop, seed=seed)


def parse_steering(body: dict, model: SteerableModel) -> tuple[list[float] | None, dict | None]:
    """-> (λ aligned with model.attributes | None, SteerLM attribute values | None)."""
    weights = body.get("attribute_weights")
    attrs = body.get("attributes")
    if weights is not None:
        if model.kind != "plural":
            raise APIError(400, f"'attribute_weights' given but this is a {model.kind} model "
                           + ("(use 'attributes')" if model.kind == "steerlm" else "without steerable heads"),
                           param="attribute_weights", code="unsupported_parameter")
        if not isinstance(weights, dict):
            raise APIError(400, "'attribute_weights' must be an object {attribute: weight}",
                           param="attribute_weights", code="invalid_type")
        for k, v in weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise APIError(400, f"attribute_weights['{k}'] must be a number", param="attribute_weights",
                               code="invalid_type")
    try:
        vec = model.resolve_weights(weights)
    except SteeringError as e:
        raise APIError(400, str(e), param="attribute_weights", code="invalid_weights") from None
    if attrs is not None:
        if model.kind != "steerlm":
            raise APIError(400, f"'attributes' (SteerLM conditioning) given but this is a {model.kind} model",
                           param="attributes", code="unsupported_parameter")
        if not isinstance(attrs, dict):
            raise APIError(400, "'attributes' must be an object {attribute: value}", param="attributes",
                           code="invalid_type")
    if model.kind == "steerlm":
        try:
            format_acm_attributes(attrs, model.attributes)
        except SteeringError as e:
            raise APIError(400, str(e), param="attributes", code="invalid_attributes") from None
        attrs = {a: (attrs or {}).get(a, 0) for a in model.attributes}
    return vec, attrs


def parse_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages",
                       code="invalid_type" if messages is not None else "missing_required_parameter")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise APIError(400, f"messages[{i}] must be an object with role system|user|assistant",
                           param=f"messages[{i}]", code="invalid_type")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text
            if any(not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str)
                   for p in content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content", code="invalid_type")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content",
                           code="invalid_type")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise APIError(400, "the last message must have role 'user'", param="messages", code="invalid_value")
    return out


# --------------------------------------------------------------------------- the app


def create_app(model: SteerableModel, settings: ServerSettings | None = None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or ServerSettings()
    batcher = Batcher(model, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.stop()

    app = FastAPI(title="cmpo", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher

    def error(e: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error(APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return error(APIError(400, str(exc), code="invalid_request"))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc):
        return error(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))

    def check_auth(request: Request) -> None:
        if not settings.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                   settings.api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    async def read_json(request: Request) -> dict:
        check_auth(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise APIError(413, f"request body over {settings.max_body_bytes} bytes", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise APIError(413, f"request body over {settings.max_body_bytes} bytes", code="body_too_large")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        if "model" in body and not isinstance(body["model"], str):
            raise APIError(400, "'model' must be a string", param="model", code="invalid_type")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise APIError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
        return body

    def steering_echo(vec, attrs) -> dict:
        out = {}
        if vec is not None:
            out["attribute_weights"] = dict(zip(model.attributes, vec))
        if attrs is not None:
            out["attributes"] = attrs
        return out

    def prepare(body: dict, prompt_ids: list[int], options: GenerationOptions, vec) -> Job:
        if len(prompt_ids) > settings.max_prompt_tokens:
            raise APIError(400, f"prompt has {len(prompt_ids)} tokens; this server accepts at most "
                           f"{settings.max_prompt_tokens}", param="messages" if "messages" in body else "prompt",
                           code="context_length_exceeded")
        job = Job(Row(prompt_ids, weights=vec, max_new_tokens=options.max_new_tokens, stop=options.stop),
                  options, asyncio.get_running_loop(), asyncio.Queue())
        job.row.cancel = job.cancel
        job.row.on_text = lambda delta: job.emit("text", delta)
        batcher.submit(job)
        return job

    async def respond(job: Job, body: dict, chat: bool, echo: dict, n_prompt: int):
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"

        def usage():
            n_out = len(job.row.tokens)
            return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}

        def finish_reason():
            return "length" if job.row.finish_reason == "length" else "stop"

        if not body.get("stream"):
            try:
                while True:
                    kind, payload = await job.events.get()
                    if kind == "done":
                        break
                    if kind == "error":
                        raise APIError(500, f"generation failed: {payload}", type_="server_error")
            except asyncio.CancelledError:
                job.cancel.set()
                raise
            text = job.row.text
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": finish_reason(), "logprobs": None} if chat else
                      {"index": 0, "text": text, "finish_reason": finish_reason(), "logprobs": None})
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": settings.model_name,
                                 "choices": [choice], "usage": usage(), **echo})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) \
            if isinstance(body.get("stream_options"), dict) else False
        obj_chunk = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta_text=None, role=False, finish=None) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else (
                    {"content": delta_text} if delta_text is not None else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
            data = {"id": rid, "object": obj_chunk, "created": created, "model": settings.model_name,
                    "choices": [choice], **echo}
            return f"data: {json.dumps(data)}\n\n"

        async def events():
            try:
                if chat:
                    yield chunk(role=True)
                while True:
                    kind, payload = await job.events.get()
                    if kind == "text":
                        yield chunk(payload)
                    elif kind == "error":
                        err = APIError(500, f"generation failed: {payload}", type_="server_error")
                        yield f"data: {json.dumps(err.body())}\n\n"
                        break
                    else:
                        yield chunk(finish=finish_reason())
                        if include_usage:
                            data = {"id": rid, "object": obj_chunk, "created": created,
                                    "model": settings.model_name, "choices": [], "usage": usage()}
                            yield f"data: {json.dumps(data)}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.cancel.set()  # client gone or stream finished: stop generating this row

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        messages = parse_messages(body)
        options = parse_options(body, settings)
        vec, attrs = parse_steering(body, model)
        try:
            prompt_ids = model.encode_prompt(messages, attrs)
        except (ValueError, TypeError) as e:
            raise APIError(400, f"cannot render the conversation: {e}", param="messages",
                           code="invalid_value") from None
        job = prepare(body, prompt_ids, options, vec)
        return await respond(job, body, True, steering_echo(vec, attrs), len(prompt_ids))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)", param="prompt",
                           code="invalid_type" if prompt is not None else "missing_required_parameter")
        for unsupported in ("echo", "logprobs", "suffix"):
            if body.get(unsupported):
                raise APIError(400, f"'{unsupported}' is not supported", param=unsupported,
                               code="unsupported_parameter")
        options = parse_options(body, settings)
        vec, attrs = parse_steering(body, model)
        if attrs is not None:
            raise APIError(400, "SteerLM models need the chat endpoint (the attribute string follows the "
                           "assistant turn)", param="prompt", code="unsupported_parameter")
        prompt_ids = list(model.tokenizer(prompt)["input_ids"])  # raw text: no chat template
        job = prepare(body, prompt_ids, options, vec)
        return await respond(job, body, False, steering_echo(vec, attrs), len(prompt_ids))

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_auth(request)
        default = model.default_weights()
        card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "cmpo",
                "kind": model.kind, "attributes": model.attributes,
                "default_weights": dict(zip(model.attributes, default)) if default is not None else None}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "kind": model.kind,
                "queued": batcher.queued(), "batches": batcher.batches, "max_batch_seen": batcher.max_batch_seen,
                "auth": bool(settings.api_key)}

    @app.get("/")
    async def playground():
        return FileResponse(PLAYGROUND / "index.html", media_type="text/html")

    @app.get("/playground/{name}")
    async def playground_asset(name: str):
        path = PLAYGROUND / name
        if name not in {p.name for p in PLAYGROUND.iterdir()} or not path.is_file():
            raise APIError(404, f"no playground file {name!r}", code="not_found")
        media = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}.get(path.suffix)
        return FileResponse(path, media_type=media)

    return app


# --------------------------------------------------------------------------- the `cmpo serve` command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir (plural / SFT / DPO / SteerLM ACM / export) "
                        "or short name")
    parser.add_argument("--model-name", help="id reported by /v1/models (default: the directory name)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' "
                        "(default: $CMPO_API_KEY; none = open)")
    parser.add_argument("--max-prompt-tokens", type=int, default=2048)
    parser.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask")
    parser.add_argument("--max-queue", type=int, default=64, help="queued+running requests before 429")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for company")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu | cuda | auto")


def run(args) -> int:
    import uvicorn

    settings = ServerSettings(
        model_name=args.model_name or Path(str(args.model).rstrip("/")).name or "cmpo",
        api_key=args.api_key or os.environ.get("CMPO_API_KEY") or None,
        max_prompt_tokens=args.max_prompt_tokens, max_tokens_cap=args.max_tokens_cap,
        default_max_tokens=min(256, args.max_tokens_cap), max_queue=args.max_queue, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms, max_body_bytes=args.max_body_bytes,
    )
    for name in ("max_prompt_tokens", "max_tokens_cap", "max_queue", "max_batch", "max_body_bytes"):
        if getattr(settings, name) < 1:
            raise SystemExit(f"cmpo serve: --{name.replace('_', '-')} must be >= 1")
    model = SteerableModel.load(args.model, dtype=args.dtype, device=args.device)
    app = create_app(model, settings)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(f"cmpo serve: warning: listening on {args.host} with no API key", flush=True)
    print(f"cmpo serve: {model.kind} model {settings.model_name} at http://{args.host}:{args.port}/ "
          f"(playground), API at /v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
