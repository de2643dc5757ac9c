"""Durable storage of events, items and users.

`Store` is the protocol every backend implements; `SQLiteStore` is the embedded
default. An event is acknowledged only after `append_events` has committed.
"""

from kairos.store.base import EventRecord, ItemRecord, Store, UserRecord
from kairos.store.sqlite import SQLiteStore

__all__ = ["EventRecord", "ItemRecord", "SQLiteStore", "Store", "UserRecord"]
