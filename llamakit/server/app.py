"""The HTTP side: OpenAI-compatible routes over the Scheduler (llama-server's endpoints and shapes).

Every error is OpenAI's shape {"error": {"message", "type", "code"}} with a 4xx status: validation errors (FastAPI's
422) become 400, a bad API key 401, a full queue 503 with Retry-After. Streaming answers are server-sent events,
one `data: {chunk}` per token, then `data: [DONE]`. A client that disconnects cancels its job, which frees the slot
at the scheduler's next step.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LlamakitError
from .metrics import prometheus_text
from .responses import (chat_delta, chat_final, chat_first, chat_response, completion_delta, completion_final,
                        completion_response)
from .scheduler import Done, Failed, GenParams, Job, QueueFull, Scheduler, Token
from .schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
                      TokenizeRequest, _Sampling)

PUBLIC = {"/", "/health", "/favicon.ico"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.headers = status, message, type_, headers


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": status}}, status, headers=headers)


class ApiKeyMiddleware:
    """401 unless `Authorization: Bearer KEY` (or `X-Api-Key: KEY`); `/` and `/health` are public. A plain ASGI
    middleware: starlette's BaseHTTPMiddleware would hide a client's disconnect from the routes."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if self.key not in (bearer, headers.get("x-api-key")):
                resp = error_response(401, "invalid API key: pass it as 'Authorization: Bearer KEY'",
                                      "authentication_error")
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Outbox:
    """Scheduler events on their way to the event loop: `put` (the job sinks, on the scheduler thread) only queues,
    `flush` (the scheduler's on_step hook) wakes the loop once for everything a step produced. One
    call_soon_threadsafe per token would be a syscall and a GIL hand-off to the loop's thread per token, in the
    middle of the step."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, Any]] = []
        self._lock = threading.Lock()

    def put(self, q: asyncio.Queue, ev: Any) -> None:
        with self._lock:
            self._items.append((q, ev))

    def flush(self) -> None:
        with self._lock:
            if not self._items:
                return
            items, self._items = self._items, []
        try:
            self.loop.call_soon_threadsafe(self._deliver, items)
        except RuntimeError:  # the event loop is gone (shutdown)
            pass

    @staticmethod
    def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
        for q, ev in items:
            q.put_nowait(ev)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(backend: Any, scheduler: Scheduler, alias: str, api_key: Optional[str] = None) -> FastAPI:
    app = FastAPI(title="llamakit", version="0.1.0", docs_url=None, redoc_url=None)
    created = int(time.time())
    n_ctx = scheduler.n_ctx

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.headers)

    @app.exception_handler(LlamakitError)
    async def _lk(_: Request, exc: LlamakitError) -> JSONResponse:
        return error_response(400, str(exc))

    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key)

    # ---------------------------------------------------------------------------------------- helpers
    def params_of(body: _Sampling, max_tokens: Optional[int], logprobs: Optional[int]) -> GenParams:
        bias = None
        if body.logit_bias:
            try:
                bias = {int(k): float(v) for k, v in body.logit_bias.items()}
            except ValueError:
                raise ApiError(400, "logit_bias keys must be token ids") from None
            if any(not 0 <= k < backend.n_vocab for k in bias):
                raise ApiError(400, f"logit_bias: token ids must be in [0, {backend.n_vocab})")
        return GenParams(
            max_tokens=max_tokens, stop=body.stops(),
            temp=0.8 if body.temperature is None else body.temperature,
            top_p=0.95 if body.top_p is None else body.top_p,
            top_k=40 if body.top_k is None else body.top_k,
            min_p=0.05 if body.min_p is None else body.min_p,
            seed=-1 if body.seed is None else body.seed,
            repeat_penalty=1.0 if body.repeat_penalty is None else body.repeat_penalty,
            presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
            logprobs=logprobs, logit_bias=bias)

    def check_prompt(tokens: list[int]) -> None:
        scheduler.check_prompt(tokens)  # the completion core's checks: InputError -> 400

    outboxes: list[_Outbox] = []  # the one of the running event loop (made by its first request)

    def outbox() -> _Outbox:
        loop = asyncio.get_running_loop()
        if not outboxes or outboxes[-1].loop is not loop:
            outboxes.append(_Outbox(loop))
            scheduler.on_step = outboxes[-1].flush
        return outboxes[-1]

    def start(tokens: list[int], params: GenParams) -> tuple[Job, asyncio.Queue]:
        q: asyncio.Queue = asyncio.Queue()
        box = outbox()
        job = Job(tokens, params, lambda ev: box.put(q, ev))
        try:
            scheduler.submit(job)
        except QueueFull as e:
            raise ApiError(503, f"server busy: {e}; retry later", "server_error", {"Retry-After": "1"}) from None
        return job, q

    async def collect(request: Request, job: Job, q: asyncio.Queue) -> tuple[list[Token], Done]:
        tokens: list[Token] = []
        next_check = time.monotonic() + 0.5
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), 0.5)
                except asyncio.TimeoutError:
                    ev = None
                if time.monotonic() >= next_check:  # tokens may keep coming: look at the client twice a second
                    next_check = time.monotonic() + 0.5
                    if await request.is_disconnected():
                        job.cancel()
                        raise ApiError(499, "client disconnected")
                if ev is None:
                    continue
                if isinstance(ev, Token):
                    tokens.append(ev)
                elif isinstance(ev, Failed):
                    raise ApiError(ev.status, ev.message, "server_error" if ev.status >= 500 else
                                   "invalid_request_error")
                else:
                    return tokens, ev
        finally:
            job.cancel()  # no-op once finished; frees the slot if this request was abandoned

    async def stream(job: Job, q: asyncio.Queue, first: Optional[dict], chunk: Any, final: Any
                     ) -> AsyncIterator[str]:
        try:
            if first is not None:
                yield f"data: {json.dumps(first)}\n\n"
            while True:
                ev = await q.get()
                if isinstance(ev, Token):
                    data = chunk(ev)
                    if data is not None:
                        yield f"data: {json.dumps(data)}\n\n"
                elif isinstance(ev, Failed):
                    err = {"message": ev.message, "type": "server_error", "code": ev.status}
                    yield f"data: {json.dumps({'error': err})}\n\n"
                    break
                else:
                    for data in final(ev):
                        yield f"data: {json.dumps(data)}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()

    def sse(body: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def clip(requested: Optional[int], n_prompt: int) -> Optional[int]:
        """max_tokens beyond the context is not an error: generation stops at the context ("length")."""
        return None if requested is None else min(requested, n_ctx - n_prompt)

    # ---------------------------------------------------------------------------------------- routes
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("static/chat.html").read_text("utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "slots_idle": len(scheduler.slots) - scheduler.active(),
                "slots_processing": scheduler.active()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus_text(scheduler), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": alias, "object": "model", "created": created,
                                            "owned_by": "llamakit", "meta": {"n_ctx_slot": n_ctx,
                                                                             "n_vocab": backend.n_vocab}}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = backend.tokenize(backend.chat_prompt(messages), add_special=True, parse_special=True)
        check_prompt(prompt)
        top = (body.top_logprobs or 0) if body.logprobs else None
        want = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        job, q = start(prompt, params_of(body, clip(want, len(prompt)), top))
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(stream(job, q, chat_first(cid, now, alias),
                              lambda ev: chat_delta(cid, now, alias, ev, backend, body.logprobs, top),
                              lambda done: chat_final(cid, now, alias, done, usage)))
        tokens, done = await collect(request, job, q)
        return chat_response(cid, now, alias, tokens, done, backend, body.logprobs, top)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        p = body.prompt
        if isinstance(p, list) and p and isinstance(p[0], str):
            if len(p) != 1:
                raise ApiError(400, "a list of several prompts is not supported; send one request per prompt")
            p = p[0]
        prompt = backend.tokenize(p, add_special=True, parse_special=True) if isinstance(p, str) else list(p)
        check_prompt(prompt)
        job, q = start(prompt, params_of(body, clip(16 if body.max_tokens is None else body.max_tokens,
                                                    len(prompt)), body.logprobs))
        cid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(stream(job, q, None,
                              lambda ev: completion_delta(cid, now, alias, ev, backend, body.logprobs),
                              lambda done: completion_final(cid, now, alias, done, usage)))
        tokens, done = await collect(request, job, q)
        return completion_response(cid, now, alias, tokens, done, backend, body.logprobs)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict:
        inp = body.input
        if isinstance(inp, str) or (isinstance(inp, list) and inp and isinstance(inp[0], int)):
            inp = [inp]  # type: ignore[list-item]
        if not inp:
            raise ApiError(400, "input is empty")
        batches = [backend.tokenize(x, add_special=True, parse_special=True) if isinstance(x, str) else list(x)
                   for x in inp]
        for b in batches:
            check_prompt(b)
        vectors = await asyncio.wrap_future(scheduler.call(lambda: [backend.embed(b) for b in batches]))
        data = []
        for i, v in enumerate(vectors):
            if body.encoding_format == "base64":
                emb: Any = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()  # float32 LE
            else:
                emb = v
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(b) for b in batches)
        return {"object": "list", "data": data, "model": alias, "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        ids = backend.tokenize(body.content, add_special=body.add_special, parse_special=True)
        if body.with_pieces:
            return {"tokens": [{"id": t, "piece": backend.piece(t)} for t in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        return {"content": backend.detokenize(body.tokens)}

    return app
