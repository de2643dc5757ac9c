"""The ingest path: what a write request runs. A write is stored durably (one SQLite
transaction), then the process's own replica applies exactly what it wrote through the
log follower, the one way the online state changes (replica/follower.py); other
processes learn of it by following the log. Nothing here reads for a request.

    target.py   what a write needs of the replica it lands in (the Engine)
    writer.py   events, items, users and forgetting: validate, store, apply, tell
"""

from kairos.ingest.target import WriteTarget
from kairos.ingest.writer import Writer, records_from

__all__ = ["WriteTarget", "Writer", "records_from"]
