"""Start the server: load the model, split the context over the slots, run uvicorn until SIGINT/SIGTERM.

Shutdown (uvicorn's): stop accepting connections, let in-flight requests finish for up to `grace` seconds,
cancel what is left, then stop the scheduler thread (waiting jobs end with finish_reason "cancelled").
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .backend import Backend


@dataclass(frozen=True)
class ServeOptions:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8080
    n_parallel: int = 1
    n_ctx: int = 4096  # all slots together, as llama-server's -c; 0 = the model's training context
    gpu_layers: int = -1
    api_key: Optional[str] = None
    alias: Optional[str] = None
    chunk: int = 128  # prompt tokens per slot per step
    queue_size: Optional[int] = None  # waiting requests beyond the slots (default 4 x slots)
    grace: float = 10.0  # seconds in-flight requests get to finish on shutdown
    n_threads: Optional[int] = None  # -t (None: the physical cores)


def serve(opts: ServeOptions, log: Callable[[str], None]) -> None:
    import uvicorn

    from .app import create_app
    from .scheduler import Scheduler

    if opts.n_parallel < 1:
        raise InputError(f"-np {opts.n_parallel}: give at least 1 slot")
    if opts.n_ctx < 0:
        raise InputError(f"-c {opts.n_ctx}: the context size must be >= 0 (0 = the model's)")
    if opts.queue_size is not None and opts.queue_size < 0:
        raise InputError(f"--max-queue {opts.queue_size}: give 0 or more")
    if not 0 <= opts.port < 65536:
        raise InputError(f"--port {opts.port}: give a port in 0..65535")
    backend = Backend(opts.model, opts.n_ctx, opts.n_parallel, opts.gpu_layers, n_threads=opts.n_threads, log=log)
    n_slot = backend.ctx.n_ctx
    scheduler = Scheduler(backend, opts.n_parallel, queue_size=opts.queue_size, chunk=opts.chunk)
    alias = opts.alias or opts.model.name
    app = create_app(backend, scheduler, alias, opts.api_key)
    log(f"llamakit serve: {alias}, {opts.n_parallel} slot(s) x {n_slot} tokens, "
        f"listening on http://{opts.host}:{opts.port}")
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                            timeout_graceful_shutdown=int(opts.grace))
    # uvicorn re-raises the signal that stopped it once it is done; these no-op handlers receive it, so that
    # the scheduler is stopped below and the process exits with status 0 after a graceful shutdown.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        scheduler.stop()
        backend.close()
        log("llamakit serve: stopped")
