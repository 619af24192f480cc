"""Continuous batching over N slots of one multi-sequence Context (llama-server's slots, update_slots()).

One scheduler thread owns the Context. Each step it
  1. drops cancelled jobs (a client that went away) and admits waiting jobs into free slots, picking the free
     slot whose cached tokens share the longest prefix with the new prompt (then `ctx.truncate(lcp, seq)`
     keeps that prefix and only the rest is evaluated),
  2. builds ONE `ctx.decode_batch(items)` call: the pending token of every generating slot, then prompt
     chunks (at most `chunk` tokens per slot, `budget` tokens per step in all) of slots still reading their
     prompt, so a long prompt never stalls the others for more than one chunk,
  3. samples a token for every slot whose prompt is complete, streams its text and finishes the slot on an
     end-of-generation token, a stop string, max_tokens or a full context ("length").
Jobs beyond the free slots wait in a bounded queue; `submit` raises QueueFull beyond it (the app's 503).

Events go to the job's `sink` (called on the scheduler thread; the app forwards them to its event loop):
    Token(text, token, logprob)   one per generated token; text may be "" (held back: a partial UTF-8
                                  character or a possible start of a stop string)
    Done(finish_reason, usage)    last event; finish_reason "stop", "length" or "cancelled"
    Failed(message)               last event, instead of Done, when the engine raised
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


class QueueFull(Exception):
    """More jobs than slots + queue: the caller should retry later."""


@dataclass(frozen=True)
class GenParams:
    max_tokens: Optional[int] = None  # None: until the context is full
    stop: tuple[str, ...] = ()
    temp: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int = -1
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Optional[int] = None  # None: off; k: the chosen token's logprob and the k most likely
    logit_bias: Optional[dict[int, float]] = None


@dataclass
class Token:
    text: str
    token: int
    logprob: Optional[tuple[float, list[tuple[int, float]]]] = None


@dataclass
class Done:
    finish_reason: str
    n_prompt: int
    n_generated: int
    n_cached: int  # prompt tokens found in the slot's cache (not evaluated again)


@dataclass
class Failed:
    message: str


@dataclass
class Job:
    prompt: list[int]
    params: GenParams
    sink: Callable[[Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Metrics:
    requests: int = 0
    rejected: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    forward_passes: int = 0  # ctx.decode_batch calls
    batched_tokens: int = 0  # tokens in those calls
    decode_seconds: float = 0.0
    max_batch: int = 0  # most sequences in one decode_batch call


class Slot:
    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.cached: list[int] = []  # tokens in this sequence's KV cache, in order
        self.job: Optional[Job] = None
        self.last_used = 0.0
        self.todo: list[int] = []  # prompt tokens still to evaluate
        self.pending: Optional[int] = None  # sampled token to evaluate next step
        self.sampler: Any = None
        self.decoder: Any = None
        self.text = ""  # generated text so far
        self.sent = 0  # characters of `text` already sent
        self.n_gen = 0
        self.n_cached = 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string (not sent yet)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Scheduler:
    def __init__(self, backend: Any, n_slots: int, queue_size: Optional[int] = None, chunk: int = 128,
                 budget: int = 256) -> None:
        self.backend, self.ctx = backend, backend.ctx
        self.n_ctx: int = self.ctx.n_ctx
        self.slots = [Slot(i) for i in range(n_slots)]
        self.queue_size = 4 * n_slots if queue_size is None else queue_size
        self.chunk, self.budget = max(1, chunk), max(chunk, budget)
        self.metrics = Metrics()
        self._waiting: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llamakit-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from the server's threads
    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            busy = sum(s.job is not None for s in self.slots)
            if busy + len(self._waiting) >= len(self.slots) + self.queue_size:
                self.metrics.rejected += 1
                raise QueueFull(f"all {len(self.slots)} slots are busy and {len(self._waiting)} requests wait")
            self.metrics.requests += 1
            self._waiting.append(job)
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the scheduler thread between two steps (the model is not thread-safe to share)."""
        fut: Future = Future()
        with self._cv:
            if self._stopping:
                fut.set_exception(QueueFull("the server is shutting down"))
                return fut
            self._calls.append((fn, fut))
            self._cv.notify()
        return fut

    def queue_depth(self) -> int:
        return len(self._waiting)

    def active(self) -> int:
        return sum(s.job is not None for s in self.slots)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything still running or waiting, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the scheduler thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._calls and not self._waiting and \
                        not any(s.job for s in self.slots):
                    self._cv.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # handed to the awaiting request
                        fut.set_exception(e)
            self._admit()
            try:
                self._step()
            except Exception as e:  # an engine failure ends the running jobs, not the server
                for s in self.slots:
                    if s.job is not None:
                        s.cached = []
                        self.ctx.clear(s.seq)
                        self._finish(s, "error", failed=f"generation failed: {e}")
        with self._cv:
            waiting = list(self._waiting)
            self._waiting.clear()
        for job in waiting:
            job.sink(Done("cancelled", len(job.prompt), 0, 0))
        for s in self.slots:
            if s.job is not None:
                self._finish(s, "cancelled")

    def _admit(self) -> None:
        for s in self.slots:
            if s.job is not None and s.job.cancelled.is_set():
                self.metrics.cancelled += 1
                self._finish(s, "cancelled")
        with self._cv:
            for job in [j for j in self._waiting if j.cancelled.is_set()]:
                self._waiting.remove(job)
                self.metrics.cancelled += 1
                job.sink(Done("cancelled", len(job.prompt), 0, 0))
            while self._waiting:
                free = [s for s in self.slots if s.job is None]
                if not free:
                    break
                job = self._waiting.popleft()
                best = max(free, key=lambda s: (common_prefix(s.cached, job.prompt), -s.last_used))
                self._start(best, job)

    def _start(self, s: Slot, job: Job) -> None:
        p = job.params
        keep = min(common_prefix(s.cached, job.prompt), len(job.prompt) - 1)  # >= 1 token gives logits
        self.ctx.truncate(keep, s.seq)
        s.cached = s.cached[:keep]
        s.job, s.todo, s.pending = job, job.prompt[keep:], None
        s.text, s.sent, s.n_gen, s.n_cached = "", 0, 0, keep
        s.sampler = self.backend.sampler(p.temp, p.top_p, p.top_k, p.min_p, p.seed, p.repeat_penalty,
                                         p.presence_penalty, p.frequency_penalty, p.logit_bias)
        for t in job.prompt:  # the prompt enters the penalty history, as in llama-cli
            s.sampler.accept(t)
        s.decoder = self.backend.stream_decoder()
        self.metrics.prompt_tokens += len(job.prompt)
        self.metrics.cached_tokens += keep

    def _step(self) -> None:
        items: list[tuple[Slot, list[int]]] = []
        for s in self.slots:
            if s.job is not None and s.pending is not None:
                items.append((s, [s.pending]))
        room = self.budget - len(items)
        for s in self.slots:
            if s.job is not None and s.todo and room > 0:
                n = min(self.chunk, room, len(s.todo))
                items.append((s, s.todo[:n]))
                room -= n
        if not items:
            return
        t0 = time.perf_counter()
        logits = self.ctx.decode_batch([(s.seq, toks) for s, toks in items])
        m = self.metrics
        m.decode_seconds += time.perf_counter() - t0
        m.forward_passes += 1
        m.batched_tokens += sum(len(t) for _, t in items)
        m.max_batch = max(m.max_batch, len(items))
        for (s, toks), lg in zip(items, logits):
            s.cached.extend(toks)
            if s.pending is not None:  # a generating slot (it has no prompt left)
                s.pending = None
            else:
                s.todo = s.todo[len(toks):]
                if s.todo:
                    continue
            self._sample(s, lg.reshape(-1, lg.shape[-1])[-1])

    def _sample(self, s: Slot, logits: torch.Tensor) -> None:
        job = s.job
        assert job is not None
        p = job.params
        tok = s.sampler.sample(logits)
        s.sampler.accept(tok)
        s.n_gen += 1
        self.metrics.generated_tokens += 1
        lp = None
        if p.logprobs is not None:
            logp = torch.log_softmax(logits.float(), -1)
            top = torch.topk(logp, p.logprobs) if p.logprobs else None
            alts = [(int(i), float(v)) for v, i in zip(*top)] if top is not None else []
            lp = (float(logp[tok]), alts)
        if tok in self.backend.eog_ids:
            job.sink(Token("", tok, lp))
            self._finish(s, "stop", flush=True)
            return
        s.text += s.decoder.feed(tok)
        for stop in p.stop:
            i = s.text.find(stop, s.sent)
            if i != -1:
                job.sink(Token(s.text[s.sent:i], tok, lp))
                s.sent = len(s.text)
                self._finish(s, "stop")
                return
        upto = len(s.text) - held_back(s.text[s.sent:], p.stop)
        job.sink(Token(s.text[s.sent:upto], tok, lp))
        s.sent = upto
        if (p.max_tokens is not None and s.n_gen >= p.max_tokens) or len(s.cached) + 1 > self.n_ctx:
            self._finish(s, "length", flush=True)
        else:
            s.pending = tok

    def _finish(self, s: Slot, reason: str, flush: bool = False, failed: Optional[str] = None) -> None:
        """End the slot's job; `flush`: send text held back for stop strings and partial characters."""
        job = s.job
        assert job is not None
        if flush:
            rest = s.text[s.sent:] + s.decoder.flush()
            if rest:
                job.sink(Token(rest, -1, None))  # text only: no new token
        s.job, s.todo, s.pending, s.sampler, s.decoder = None, [], None, None, None
        s.last_used = time.monotonic()
        if failed is not None:
            job.sink(Failed(failed))
        else:
            job.sink(Done(reason, len(job.prompt), s.n_gen, s.n_cached))
