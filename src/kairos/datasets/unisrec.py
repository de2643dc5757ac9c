"""Importer for UniSRec / RecBole atomic files (`*.text`, `*.{train,valid,test}.inter`).

These files carry each user's order but no timestamps. We rebuild every user's full
sequence and give it synthetic timestamps one day apart from SYNTHETIC_START, so
the last item is the given test target and the one before it the validation target:
leave-one-out on the import reproduces the published split exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from kairos.engine import Engine
from kairos.progress import progress
from kairos.schema import Event, Item

SYNTHETIC_START = 1_514_764_800.0  # 2018-01-01T00:00Z
SYNTHETIC_STEP = 86_400.0
HISTORY_LIMIT = 50  # the files truncate histories to the last 50 items


@dataclass
class UniSRecData:
    name: str
    items: list[Item]
    sequences: dict[str, list[str]]  # user id -> item ids, oldest first


@dataclass
class UniSRecReport:
    name: str
    items: int
    users: int
    events: int
    seconds: float

    def __str__(self) -> str:
        return (f"UniSRec {self.name}: {self.items:,} items, {self.users:,} users, "
                f"{self.events:,} events (synthetic timestamps, one day apart) in {self.seconds:.1f}s")


def is_unisrec(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.test.inter")) and any(path.glob("*.text"))


def read_unisrec(path: Path) -> UniSRecData:
    test_file = next(path.glob("*.test.inter"))
    name = test_file.name.removesuffix(".test.inter")
    index_to_asin = _read_index(path / f"{name}.item2index")
    index_to_user = _read_index(path / f"{name}.user2index")
    items = []
    with open(path / f"{name}.text", encoding="utf-8") as handle:
        next(handle)
        for line_number, line in enumerate(handle, 2):
            asin, _, text = line.rstrip("\n").partition("\t")
            if not asin:
                raise ValueError(f"{name}.text line {line_number}: no item id")
            text = text.strip()
            items.append(Item(item_id=asin, title=text.split(". ")[0][:1000], text=text))

    train_rows: dict[str, list[tuple[list[str], str]]] = {}
    for user, history, target in _read_inter(path / f"{name}.train.inter"):
        train_rows.setdefault(user, []).append((history, target))
    sequences: dict[str, list[str]] = {}
    for user, history, target in _read_inter(path / f"{name}.test.inter"):
        sequence = history + [target]
        if len(history) >= HISTORY_LIMIT:
            sequence = _untruncate(sequence, train_rows.get(user, []))
        sequences[index_to_user.get(user, user)] = [index_to_asin[i] for i in sequence]
    return UniSRecData(name, items, sequences)


def _untruncate(tail: list[str], train: list[tuple[list[str], str]]) -> list[str]:
    """A user with n items has n-3 train rows; the train row with 49 history items
    holds positions 0..49, the test row positions n-51..n-1."""
    n = len(train) + 3
    for history, target in train:
        if len(history) == HISTORY_LIMIT - 1 and n - len(tail) <= HISTORY_LIMIT:
            return (history + [target])[: n - len(tail)] + tail
    return tail


def import_unisrec(engine: Engine, path: Path, quiet: bool = False) -> UniSRecReport:
    started = time.perf_counter()
    data = read_unisrec(path)
    engine.upsert_items(data.items)
    events = [
        Event(user_id=user, item_id=item, type="purchase",
              timestamp=SYNTHETIC_START + position * SYNTHETIC_STEP)
        for user, sequence in data.sequences.items()
        for position, item in enumerate(sequence)
    ]
    events.sort(key=lambda e: (e.timestamp, e.user_id))
    with progress(f"importing {data.name}", len(events), quiet=quiet) as advance:
        for start in range(0, len(events), 10_000):
            advance(engine.ingest(events[start : start + 10_000]))
    return UniSRecReport(data.name, len(data.items), len(data.sequences), len(events),
                         time.perf_counter() - started)


def _read_index(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8") as handle:
        return {index: key for key, index in (line.rstrip("\n").split("\t") for line in handle if line.strip())}


def _read_inter(path: Path) -> list[tuple[str, list[str], str]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        next(handle)
        for line_number, line in enumerate(handle, 2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise ValueError(f"{path.name} line {line_number}: expected 3 tab-separated fields")
            rows.append((parts[0], parts[1].split(), parts[2]))
    return rows
