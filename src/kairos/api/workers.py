"""`kairos serve --workers N`: N processes serve one database on one port.

The supervisor (api/supervisor.py: uvicorn's, with a listening socket per process)
starts each process, and a new one when one dies; each calls `worker_app`, which opens
its own engine over the database named by the environment (KAIROS_DB_PATH and the
rest), rebuilds its state from the log and follows it from there (replica/). The
kernel spreads connections across the processes' sockets.
"""

from __future__ import annotations

import gc

from fastapi import FastAPI

from kairos.api.app import create_app
from kairos.config import Settings
from kairos.engine import Engine
from kairos.threads import limit_torch_threads


def ready_to_serve(engine: Engine) -> None:
    """Before the port opens: a first request must not pay for an export or a load, and
    a request's small matrix products run on the thread that serves it."""
    single_threaded_kernels()
    if engine.semantic is not None:
        engine.semantic.warm_up()
    # The rebuilt state is millions of long-lived objects: move them out of the
    # collector's sight, or every full collection pauses serving for most of a second.
    # (No collection first: it took 1.3 s at 1M events and finds next to nothing.)
    gc.freeze()


def single_threaded_kernels() -> None:
    """One thread for BLAS, OpenMP (faiss) and torch's intra-op pool in a serving process.
    A request's products are small; pools sized to the machine spin on cores that the
    other requests (and processes) need, and a matrix-vector product waited for the next
    scheduler tick on a busy 2-core machine (docs/benchmarks.md). Training runs in its
    own process and keeps its own threads."""
    import faiss
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    faiss.omp_set_num_threads(1)
    limit_torch_threads(1)


def worker_app() -> FastAPI:
    engine = Engine(Settings())
    ready_to_serve(engine)
    return create_app(engine, owns_engine=True)
