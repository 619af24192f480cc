"""Continuous batching over N slots of one multi-sequence Context (llama-server's slots and update_slots()).

Each slot runs the Python API's completion core (runtime/completion.py: `Completer.stream`, the same prompt
checks, sampling, stop strings, log-probabilities and prefix reuse as `Llama`) over a `SeqView`: sequence `seq`
of the shared Context. The core is a coroutine (`CompletionStream.steps()`) that yields `Eval(tokens)` when it
needs its sequence extended; ONE scheduler thread drives every slot's coroutine, like llama-server's single
update_slots() loop. Each step it makes ONE `ctx.decode_batch(items)` call for all busy slots, then sends each
slot its logits and runs its core (sampling, detokenizing, stop strings) up to its next Eval:
  - a generating slot asks for one token, a slot reading its prompt gets a chunk of at most `chunk` tokens of
    its Eval per step, and one step takes at most `budget` tokens, so a long prompt never stalls the other
    streams for more than one chunk;
  - a new request joins at the next step in a free slot, the free slot whose cached tokens share the longest
    prefix with its prompt (the core truncates the sequence to that prefix and evaluates only the rest);
    a finished or cancelled one leaves at once.
No thread per slot: between two forward passes the only work is each slot's sampling, with no hand-offs between
threads (each a GIL round trip on the step's critical path).
Jobs beyond the free slots wait in a bounded queue; `submit` raises QueueFull beyond it (the app's 503).

Events go to the job's `sink` (called on the scheduler thread; the app queues them and forwards them to its event
loop when `on_step` is called, once per step, so the loop is woken once for all the step's tokens):
    Token(text, token, logprob)   per generated token (text may be ""); token -1: text held back until the end
    Done(finish_reason, ...)      last event; finish_reason "stop", "length" or "cancelled"
    Failed(message)               last event instead of Done, when the request failed
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import LlamakitError
from ..runtime.completion import Completer, CompletionStream, Eval, Request, common_prefix
from ..runtime.sampling import SamplingParams, resolve_seed


class QueueFull(Exception):
    """More jobs than slots + queue: the caller should retry later."""


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


class SeqView:
    """Sequence `seq` of the shared Context, as the one-sequence Context a Completer expects. Its `decode` is
    never called: the scheduler evaluates the core's Evals (see the module docstring)."""

    def __init__(self, ctx: Any, seq: int) -> None:
        self._ctx, self.seq = ctx, seq
        self.cfg, self.perf, self.n_ctx, self.n_batch = ctx.cfg, ctx.perf, ctx.n_ctx, ctx.n_batch

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
        raise RuntimeError("a slot's sequence is evaluated by the scheduler's decode_batch")


Steps = Generator[Any, Any, None]  # CompletionStream.steps()


class _Slot:
    def __init__(self, ctx: Any, seq: int, tok: Any) -> None:
        self.seq = seq
        self.comp = Completer(SeqView(ctx, seq), tok)
        self.job: Optional[Job] = None
        self.last_used = 0.0
        self.stream: Optional[CompletionStream] = None
        self.steps: Optional[Steps] = None
        self.need: list[int] = []  # tokens of the current Eval not yet evaluated
        self.fed: list[int] = []  # tokens of the current Eval already evaluated (recorded once it is complete)


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
        self._cv = threading.Condition()  # wakes the scheduler thread: a job, a call, a stop
        self._stopping = False
        # called on the scheduler thread after each step, once that step's events went to their sinks
        self.on_step: Optional[Callable[[], None]] = None
        self.slots = [_Slot(self.ctx, i, backend.tok) for i in range(n_slots)]
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
            self._cv.notify_all()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the scheduler thread between two steps (the model is not shared across threads)."""
        fut: Future = Future()
        with self._cv:
            if self._stopping:
                fut.set_exception(QueueFull("the server is shutting down"))
                return fut
            self._calls.append((fn, fut))
            self._cv.notify_all()
        return fut

    def queue_depth(self) -> int:
        return len(self._waiting)

    def active(self) -> int:
        return sum(s.job is not None for s in self.slots)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything still running or waiting, then end the scheduler thread."""
        with self._cv:
            self._stopping = True
            for job in self._waiting:
                job.sink(Done("cancelled", len(job.prompt), 0, 0))
            self._waiting.clear()
            for s in self.slots:
                if s.job is not None:
                    s.job.cancel()
            self._cv.notify_all()
        self._stepped()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the scheduler thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._calls or self._waiting or self.active()):
                    self._cv.wait()
                stopping = self._stopping
                calls = list(self._calls)
                self._calls.clear()
                started = self._admit() if not stopping else []
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # handed to the awaiting request
                        fut.set_exception(e)
            for slot in started:
                self._start(slot)
            for slot in self.slots:  # a cancelled job (its client went away, or the server stops) leaves now
                if slot.job is not None and (stopping or slot.job.cancelled.is_set()):
                    self._finish(slot, cancelled=True)
            if stopping:
                self._stepped()
                return
            items = self._pick()
            if items:
                self._decode(items)
            self._stepped()

    def _stepped(self) -> None:
        hook = self.on_step
        if hook is not None:
            try:
                hook()
            except Exception:  # the app's hook must not stop the scheduler
                pass

    def _admit(self) -> list[_Slot]:
        """Under the lock: drop cancelled waiting jobs, put waiting jobs into free slots (returned)."""
        for job in [j for j in self._waiting if j.cancelled.is_set()]:
            self._waiting.remove(job)
            self.metrics.cancelled += 1
            job.sink(Done("cancelled", len(job.prompt), 0, 0))
        started = []
        while self._waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                break
            job = self._waiting.popleft()
            best = max(free, key=lambda s: (common_prefix(s.comp.tokens, job.prompt), -s.last_used))
            best.job = job
            started.append(best)
        return started

    def _start(self, slot: _Slot) -> None:
        """Build the job's completion in this slot and run its core up to its first Eval."""
        job = slot.job
        assert job is not None
        p, comp = job.params, slot.comp
        try:
            comp.rng.manual_seed(resolve_seed(p.seed))
            req = Request(job.prompt, max_tokens=-1 if p.max_tokens is None else max(1, p.max_tokens),
                          sampling=SamplingParams(temp=p.temp, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                                                  repeat_penalty=p.repeat_penalty,
                                                  presence_penalty=p.presence_penalty,
                                                  frequency_penalty=p.frequency_penalty),
                          stop=p.stop, logprobs=p.logprobs, logit_bias=p.logit_bias)
            slot.stream = comp.stream(req)
            slot.steps = slot.stream.steps()
            self.metrics.prompt_tokens += len(job.prompt)
        except Exception as e:
            self._fail(slot, e)
            return
        self._advance(slot, None, None)

    def _advance(self, slot: _Slot, logits: Any, error: Optional[BaseException]) -> None:
        """Send the logits of the slot's last Eval (or throw its error) into its core and run the core, sending
        its text to the sink, until it asks for its next Eval, ends, or its client has gone."""
        job, steps, stream = slot.job, slot.steps, slot.stream
        assert job is not None and steps is not None and stream is not None
        p, res, m = job.params, stream.result, self.metrics
        try:
            item = steps.throw(error) if error is not None else steps.send(logits)
            while not isinstance(item, Eval):
                tok, text = item
                lp = None
                if tok is not None:
                    m.generated_tokens += 1
                    if p.logprobs is not None and res.logprobs:
                        lp = (res.logprobs[-1].logprob, res.logprobs[-1].top)
                job.sink(Token(text, -1 if tok is None else tok, lp))
                if job.cancelled.is_set():
                    self._finish(slot, cancelled=True)
                    return
                item = steps.send(None)
        except StopIteration:
            self._finish(slot, cancelled=False)
            return
        except Exception as e:  # reported to this request; the slot stays usable
            self._fail(slot, e)
            return
        slot.need, slot.fed = list(item.tokens), []

    def _finish(self, slot: _Slot, cancelled: bool) -> None:
        job, stream = slot.job, slot.stream
        assert job is not None
        if slot.steps is not None:
            slot.steps.close()  # the core's finally: the result is complete
        if stream is None:  # failed before it started
            done = Done("cancelled", len(job.prompt), 0, 0)
        else:
            res = stream.result
            self.metrics.cached_tokens += res.n_reused
            n_gen = len(res.tokens) - (1 if res.stop_reason == "eog" and res.tokens else 0)
            done = Done("cancelled" if cancelled else res.finish_reason, len(job.prompt), n_gen, res.n_reused)
        if cancelled:
            self.metrics.cancelled += 1
        self._free(slot, done)

    def _fail(self, slot: _Slot, e: BaseException) -> None:
        if slot.steps is not None:
            slot.steps.close()
        bad = isinstance(e, LlamakitError)
        self._free(slot, Failed(str(e) if bad else f"generation failed: {e!r}", 400 if bad else 500))

    def _free(self, slot: _Slot, final: Any) -> None:
        """The slot is free before the client hears that its request ended."""
        job = slot.job
        assert job is not None
        with self._cv:
            slot.job, slot.stream, slot.steps, slot.need, slot.fed = None, None, None, [], []
            slot.last_used = time.monotonic()
        try:
            job.sink(final)
        except Exception:  # a sink that fails cannot stop the other slots
            pass

    def _pick(self) -> list[tuple[_Slot, list[int]]]:
        """This step's items, single tokens first, then prompt chunks (at most `chunk` tokens of a slot's Eval)
        within the budget."""
        busy = sorted((s for s in self.slots if s.job is not None and s.need), key=lambda s: len(s.need))
        items: list[tuple[_Slot, list[int]]] = []
        n = 0
        for slot in busy:
            toks = slot.need[:self.chunk]
            if items and n + len(toks) > self.budget:
                break
            items.append((slot, toks))
            n += len(toks)
        return items

    def _decode(self, items: list[tuple[_Slot, list[int]]]) -> None:
        t0 = time.perf_counter()
        error: Optional[BaseException] = None
        try:
            logits: Sequence[Any] = self.ctx.decode_batch([(slot.seq, toks) for slot, toks in items])
        except Exception as e:  # every slot in this batch fails; the server goes on
            error, logits = e, [None] * len(items)
        m = self.metrics
        m.decode_seconds += time.perf_counter() - t0
        m.forward_passes += 1
        m.batched_tokens += sum(len(t) for _, t in items)
        m.max_batch = max(m.max_batch, len(items))
        for (slot, toks), lg in zip(items, logits):
            slot.fed += toks
            del slot.need[:len(toks)]
            if slot.need and error is None:
                continue  # the rest of this Eval goes in the next steps
            slot.comp.record(slot.fed)  # the Completer's bookkeeping, as its own decode does
            self._advance(slot, lg, error)
