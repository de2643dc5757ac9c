"""`kairos serve --workers N`: N processes serve one database on one port.

Uvicorn's supervisor starts each process (and starts a new one when one dies); each
calls `worker_app`, which opens its own engine over the database named by the
environment (KAIROS_DB_PATH and the rest), rebuilds its state from the log and
follows it from there (replica/). The kernel spreads connections across them.
"""

from __future__ import annotations

import gc

from fastapi import FastAPI

from kairos.api.app import create_app
from kairos.config import Settings
from kairos.engine import Engine


def ready_to_serve(engine: Engine) -> None:
    """Before the port opens: a first request must not pay for an export or a load."""
    if engine.semantic is not None:
        engine.semantic.warm_up()
    # The rebuilt state is millions of long-lived objects: move them out of the
    # collector's sight, or every full collection pauses serving for most of a second.
    gc.collect()
    gc.freeze()


def worker_app() -> FastAPI:
    engine = Engine(Settings())
    ready_to_serve(engine)
    return create_app(engine, owns_engine=True)
