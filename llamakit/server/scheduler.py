"""Continuous batching over N slots of one multi-sequence Context (llama-server's slots and update_slots()).

Each slot runs the Python API's completion core (runtime/completion.py: `Completer.stream`, the same prompt
checks, sampling, stop strings, log-probabilities and prefix reuse as `Llama`) on its own thread, over a
`SeqView`: sequence `seq` of the shared Context, whose `decode` does not run the model but hands its tokens to
the scheduler and waits. The scheduler thread waits until every busy slot has handed in its tokens, then makes
ONE `ctx.decode_batch(items)` call for all of them and gives each slot its logits:
  - a generating slot hands in one token, a slot reading its prompt a chunk of at most `chunk` tokens
    (SeqView splits the core's prompt decode), and one step takes at most `budget` tokens, so a long prompt
    never stalls the other streams for more than one chunk;
  - a new request joins at the next step in a free slot, the free slot whose cached tokens share the longest
    prefix with its prompt (the core truncates the sequence to that prefix and evaluates only the rest);
    a finished or cancelled one leaves at once.
Jobs beyond the free slots wait in a bounded queue; `submit` raises QueueFull beyond it (the app's 503).

Wake-ups: one lock, two conditions: `_cv` wakes slot threads waiting for a job, `_wake` the scheduler thread,
and each hand-in gets its own `_Box` (an Event): a step wakes each slot once and the scheduler once per hand-in,
not every waiting thread on every change (each needless wake-up is a GIL round trip on the step's critical path).

Events go to the job's `sink` (called on the slot's thread; the app forwards them to its event loop):
    Token(text, token, logprob)   per generated token (text may be ""); token -1: text held back until the end
    Done(finish_reason, ...)      last event; finish_reason "stop", "length" or "cancelled"
    Failed(message)               last event instead of Done, when the request failed
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import LlamakitError
from ..runtime.completion import Completer, Request, common_prefix
from ..runtime.sampling import SamplingParams, resolve_seed


class QueueFull(Exception):
    """More jobs than slots + queue: the caller should retry later."""


class Cancelled(Exception):
    """Raised inside a slot's decode when its client went away or the server stops."""


@dataclass(frozen=True)
class GenParams:
    max_tokens: Optional[int] = None  # None: until an end-of-generation token or a full context
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
    status: int = 500  # 400 when the request itself was at fault (a LlamakitError)


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


class _Box:
    """One hand-in's result: the logits, or the exception to raise in the slot."""

    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None

    def put(self, value: Any) -> None:
        self.value = value
        self.event.set()


class SeqView:
    """Sequence `seq` of the shared Context, as the one-sequence Context a Completer expects."""

    def __init__(self, sched: "Scheduler", seq: int) -> None:
        self._sched, self._ctx, self.seq = sched, sched.ctx, seq
        self.cfg, self.perf, self.n_ctx, self.n_batch = self._ctx.cfg, self._ctx.perf, self._ctx.n_ctx, self._ctx.n_batch

    @property
    def n_past(self) -> int:
        return self._ctx.n_past_of(self.seq)

    def n_past_of(self, seq: int = 0) -> int:
        return self._ctx.n_past_of(self.seq)

    def truncate(self, n: int, seq: int = 0) -> None:
        self._ctx.truncate(n, self.seq)

    def clear(self, seq: Optional[int] = None) -> None:
        self._ctx.clear(self.seq)

    def decode(self, tokens: Sequence[int], logits: str = "last", seq: int = 0) -> Any:
        out = None
        for s in range(0, len(tokens), self._sched.chunk):
            out = self._sched._batched(self.seq, list(tokens[s:s + self._sched.chunk]))
        return out


class _Slot:
    def __init__(self, sched: "Scheduler", seq: int, tok: Any) -> None:
        self.seq = seq
        self.comp = Completer(SeqView(sched, seq), tok)
        self.job: Optional[Job] = None
        self.last_used = 0.0
        self.thread = threading.Thread(target=sched._slot_main, args=(self,), name=f"llamakit-slot-{seq}",
                                       daemon=True)


class Scheduler:
    def __init__(self, backend: Any, n_slots: int, queue_size: Optional[int] = None, chunk: int = 128,
                 budget: int = 256) -> None:
        self.backend, self.ctx = backend, backend.ctx
        self.n_ctx: int = self.ctx.n_ctx
        self.queue_size = 4 * n_slots if queue_size is None else queue_size
        self.chunk, self.budget = max(1, chunk), max(chunk, budget)
        self.metrics = Metrics()
        self._waiting: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._pending: dict[int, tuple[list[int], _Box]] = {}  # seq -> (tokens, where its logits go)
        self._lock = threading.RLock()  # as Condition()'s own: a sink called under it may call back
        self._cv = threading.Condition(self._lock)  # slot threads waiting for a job
        self._wake = threading.Condition(self._lock)  # the scheduler thread
        self._stopping = False
        self.slots = [_Slot(self, i, backend.tok) for i in range(n_slots)]
        for s in self.slots:
            s.thread.start()
        self._thread = threading.Thread(target=self._loop, name="llamakit-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from the server's threads
    def check_prompt(self, tokens: Sequence[int]) -> None:
        """The completion core's prompt checks (InputError: empty, too long for a slot, ids out of range)."""
        self.slots[0].comp.check_prompt(tokens)

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self.active() + len(self._waiting) >= len(self.slots) + self.queue_size:
                self.metrics.rejected += 1
                raise QueueFull(f"all {len(self.slots)} slots are busy and {len(self._waiting)} requests wait")
            self.metrics.requests += 1
            self._waiting.append(job)
            self._wake.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the scheduler thread between two steps (the model is not shared across threads)."""
        fut: Future = Future()
        with self._cv:
            if self._stopping:
                fut.set_exception(QueueFull("the server is shutting down"))
                return fut
            self._calls.append((fn, fut))
            self._wake.notify()
        return fut

    def queue_depth(self) -> int:
        return len(self._waiting)

    def active(self) -> int:
        return sum(s.job is not None for s in self.slots)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything still running or waiting, then end the threads."""
        with self._cv:
            self._stopping = True
            for job in self._waiting:
                job.sink(Done("cancelled", len(job.prompt), 0, 0))
            self._waiting.clear()
            for s in self.slots:
                if s.job is not None:
                    s.job.cancel()
            self._cv.notify_all()
            self._wake.notify()
        self._thread.join(timeout)
        for s in self.slots:
            s.thread.join(timeout)

    # ------------------------------------------------------------------ slot threads
    def _batched(self, seq: int, tokens: list[int]) -> Any:
        """A slot's decode: queue the tokens for the next decode_batch and wait for their logits."""
        box = _Box()
        with self._lock:
            job = self.slots[seq].job
            if self._stopping or job is None or job.cancelled.is_set():
                raise Cancelled()
            self._pending[seq] = (tokens, box)
            self._wake.notify()
        box.event.wait()
        if isinstance(box.value, BaseException):
            raise box.value
        return box.value

    def _slot_main(self, slot: _Slot) -> None:
        while True:
            with self._cv:
                while slot.job is None and not self._stopping:
                    self._cv.wait()
                if self._stopping and slot.job is None:
                    return
                job = slot.job
            assert job is not None
            final: Any
            try:
                final = self._run(slot, job)
            except Exception as e:  # reported to this request; the slot stays usable
                bad = isinstance(e, LlamakitError)
                final = Failed(str(e) if bad else f"generation failed: {e!r}", 400 if bad else 500)
            with self._lock:  # the slot is free before the client hears that its request ended
                slot.job = None
                slot.last_used = time.monotonic()
                self._wake.notify()  # a step may be waiting for this slot's tokens; a queued job may take it
            job.sink(final)

    def _run(self, slot: _Slot, job: Job) -> Done:
        """Run the job's completion in this slot; returns its Done (sent once the slot is free)."""
        p, comp, m = job.params, slot.comp, self.metrics
        comp.rng.manual_seed(resolve_seed(p.seed))
        req = Request(job.prompt, max_tokens=-1 if p.max_tokens is None else max(1, p.max_tokens),
                      sampling=SamplingParams(temp=p.temp, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                                              repeat_penalty=p.repeat_penalty, presence_penalty=p.presence_penalty,
                                              frequency_penalty=p.frequency_penalty),
                      stop=p.stop, logprobs=p.logprobs, logit_bias=p.logit_bias)
        stream = comp.stream(req)
        res = stream.result
        m.prompt_tokens += len(job.prompt)
        events = stream.events()
        cancelled = False
        try:
            for tok, text in events:
                lp = None
                if tok is not None:
                    m.generated_tokens += 1
                    if p.logprobs is not None and res.logprobs:
                        lp = (res.logprobs[-1].logprob, res.logprobs[-1].top)
                job.sink(Token(text, -1 if tok is None else tok, lp))
                if job.cancelled.is_set():
                    cancelled = True
                    break
        except Cancelled:
            cancelled = True
        finally:
            events.close()
        m.cached_tokens += res.n_reused
        n_gen = len(res.tokens) - (1 if res.stop_reason == "eog" and res.tokens else 0)
        if cancelled:
            m.cancelled += 1
            return Done("cancelled", len(job.prompt), n_gen, res.n_reused)
        return Done(res.finish_reason, len(job.prompt), n_gen, res.n_reused)

    # ------------------------------------------------------------------ the scheduler thread
    def _loop(self) -> None:
        while True:
            with self._lock:
                deadline = None
                while True:
                    if self._stopping:
                        for _, box in self._pending.values():
                            box.put(Cancelled())
                        self._pending.clear()
                        return
                    self._admit()
                    busy = {s.seq for s in self.slots if s.job is not None}
                    # wait for every busy slot's tokens; a slot slow to hand them in is left for the next step
                    late = deadline is not None and time.monotonic() >= deadline
                    if self._calls or (self._pending and (busy <= set(self._pending) or late)):
                        break
                    if self._pending and deadline is None:
                        deadline = time.monotonic() + 0.5
                    self._wake.wait(None if deadline is None else max(0.0, deadline - time.monotonic()) + 1e-3)
                calls = list(self._calls)
                self._calls.clear()
                items = self._pick()
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # handed to the awaiting request
                        fut.set_exception(e)
            if items:
                self._decode(items)

    def _admit(self) -> None:
        """Under the lock: drop cancelled waiting jobs, put waiting jobs into free slots."""
        for job in [j for j in self._waiting if j.cancelled.is_set()]:
            self._waiting.remove(job)
            self.metrics.cancelled += 1
            job.sink(Done("cancelled", len(job.prompt), 0, 0))
        while self._waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                break
            job = self._waiting.popleft()
            best = max(free, key=lambda s: (common_prefix(s.comp.tokens, job.prompt), -s.last_used))
            best.job = job
            self._cv.notify_all()

    def _pick(self) -> list[tuple[int, list[int], _Box]]:
        """Under the lock: this step's items, single tokens first, then prompt chunks within the budget."""
        order = sorted(self._pending.items(), key=lambda kv: len(kv[1][0]))
        items, n = [], 0
        for seq, (tokens, box) in order:
            if items and n + len(tokens) > self.budget:
                break
            items.append((seq, tokens, box))
            n += len(tokens)
        for seq, _, _ in items:
            del self._pending[seq]
        return items

    def _decode(self, items: list[tuple[int, list[int], _Box]]) -> None:
        t0 = time.perf_counter()
        try:
            logits: Sequence[Any] = self.ctx.decode_batch([(seq, toks) for seq, toks, _ in items])
        except Exception as e:  # every slot in this batch fails; the server goes on
            logits = [e] * len(items)
        m = self.metrics
        m.decode_seconds += time.perf_counter() - t0
        m.forward_passes += 1
        m.batched_tokens += sum(len(t) for _, t, _ in items)
        m.max_batch = max(m.max_batch, len(items))
        for (_, _, box), lg in zip(items, logits):
            box.put(lg)
