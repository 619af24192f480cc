"""GET /metrics: the scheduler's counters in Prometheus' text format (version 0.0.4).

`llamakit_forward_passes_total` counts ctx.decode_batch calls and `llamakit_tokens_generated_total` sampled
tokens: with several streams running, passes < tokens is what shows that decoding is batched.
"""

from __future__ import annotations

from typing import Any


def prometheus_text(scheduler: Any) -> str:
    m = scheduler.metrics
    rate = m.generated_tokens / m.decode_seconds if m.decode_seconds else 0.0
    rows = [
        ("requests_total", "counter", "requests accepted by the scheduler", m.requests),
        ("requests_rejected_total", "counter", "requests refused with 503 (queue full)", m.rejected),
        ("requests_cancelled_total", "counter", "requests whose client went away", m.cancelled),
        ("requests_processing", "gauge", "slots generating now", scheduler.active()),
        ("queue_depth", "gauge", "requests waiting for a free slot", scheduler.queue_depth()),
        ("slots_total", "gauge", "parallel sequences (-np)", len(scheduler.slots)),
        ("prompt_tokens_total", "counter", "prompt tokens of accepted requests", m.prompt_tokens),
        ("prompt_tokens_cached_total", "counter", "prompt tokens reused from a slot's cache", m.cached_tokens),
        ("tokens_generated_total", "counter", "tokens sampled", m.generated_tokens),
        ("forward_passes_total", "counter", "decode_batch calls (one forward pass each)", m.forward_passes),
        ("batched_tokens_total", "counter", "tokens evaluated by those calls", m.batched_tokens),
        ("max_batch_sequences", "gauge", "most sequences in one decode_batch call", m.max_batch),
        ("decode_seconds_total", "counter", "seconds spent in decode_batch", round(m.decode_seconds, 6)),
        ("tokens_per_second", "gauge", "tokens generated per second of decoding", round(rate, 3)),
    ]
    out = []
    for name, kind, doc, value in rows:
        out += [f"# HELP llamakit_{name} {doc}", f"# TYPE llamakit_{name} {kind}", f"llamakit_{name} {value}"]
    return "\n".join(out) + "\n"
