"""Import events or items from a CSV or JSON Lines file.

The rows use the field names of the HTTP API, so a file is just a batch written
to disk. Every row is validated through the same pydantic models as the API
before anything is stored: one bad row rejects the whole file, naming its line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kairos.engine import Engine
from kairos.progress import progress
from kairos.pseudonyms import Pseudonyms
from kairos.schema import Event, Item

BATCH_SIZE = 10_000
CSV_SUFFIXES = frozenset({".csv"})
JSON_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
# CSV cells that hold JSON (objects); `categories` is `|`-separated instead.
_JSON_COLUMNS = frozenset({"attributes", "context"})
_LIST_COLUMNS = frozenset({"categories"})
_ARRAY_HINT = " (a JSON array is not JSON Lines: write one object per line)"

ModelT = TypeVar("ModelT", bound=BaseModel)
Row = tuple[int, dict[str, Any]]


def describe_validation_error(error: ValidationError) -> str:
    """`field: message` for each problem, without pydantic's URLs and prefixes."""
    parts = []
    for problem in error.errors(include_url=False):
        field = ".".join(str(part) for part in problem["loc"]) or "row"
        message = str(problem["msg"]).removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def row_error(path: Path, line: int, problem: str) -> ValueError:
    """The one shape of import error: file, line, what is wrong."""
    return ValueError(f"{path}, line {line}: {problem}")


def validate_rows(path: Path, rows: Iterator[Row], model: type[ModelT]) -> list[ModelT]:
    """Validate every row or raise on the first bad one (so nothing is stored)."""
    validated = []
    for line, row in rows:
        try:
            validated.append(model.model_validate(row))
        except ValidationError as error:
            raise row_error(path, line, describe_validation_error(error)) from None
    return validated


def in_batches(
    values: Sequence[ModelT], write: Callable[[Sequence[ModelT]], object],
    description: str, quiet: bool,
) -> int:
    """Write `values` in batches of BATCH_SIZE behind a progress bar."""
    with progress(description, len(values), quiet=quiet) as advance:
        for start in range(0, len(values), BATCH_SIZE):
            batch = values[start : start + BATCH_SIZE]
            write(batch)
            advance(len(batch))
    return len(values)


def import_events_file(engine: Engine, path: Path, quiet: bool = False) -> int:
    """Import events (fields as in POST /v1/events); returns how many were stored.

    Events keep the file's order; one without a timestamp happened at import time. User
    ids are kept as the API keeps them (pseudonymised under KAIROS_PSEUDONYMISE_KEY).
    """
    path = Path(path)
    ids = Pseudonyms(engine.settings.pseudonymise_key)
    events = validate_rows(path, read_rows(path), Event)
    if ids.active:
        events = [event.model_copy(update={"user_id": ids.user(event.user_id)}) for event in events]
    return in_batches(events, engine.ingest, "importing events", quiet)


def import_items_file(engine: Engine, path: Path, quiet: bool = False) -> int:
    """Import items (fields as in PUT /v1/items/{item_id}, plus item_id); returns the row count.

    A later row with the same item_id replaces an earlier one, as a repeated PUT would.
    """
    path = Path(path)
    items = validate_rows(path, read_rows(path), Item)
    return in_batches(items, engine.upsert_items, "importing items", quiet)


def read_rows(path: Path) -> Iterator[Row]:
    """(line number, raw fields) per row, the format chosen by the file's extension."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _csv_rows(path)
    if suffix in JSON_SUFFIXES:
        return _json_rows(path)
    known = ", ".join(sorted(CSV_SUFFIXES | JSON_SUFFIXES))
    raise ValueError(f"{path}: unknown file type {suffix or '(none)'!r}; expected one of {known}")


def _csv_rows(path: Path) -> Iterator[Row]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        columns = [name.strip() for name in header]
        if not all(columns) or len(set(columns)) != len(columns):
            raise row_error(path, 1, f"the header needs distinct, non-empty column names: {header}")
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(columns):
                problem = f"{len(cells)} cells but the header has {len(columns)} columns"
                raise row_error(path, line, problem)
            yield line, {
                name: _csv_cell(path, line, name, cell)
                for name, cell in zip(columns, cells)
                if cell != ""
            }


def _csv_cell(path: Path, line: int, column: str, cell: str) -> Any:
    if column in _LIST_COLUMNS:
        return [part.strip() for part in cell.split("|") if part.strip()]
    if column in _JSON_COLUMNS:
        try:
            return json.loads(cell)
        except json.JSONDecodeError as error:
            raise row_error(path, line, f"{column}: not valid JSON ({error.msg})") from None
    return cell


def _json_rows(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                hint = _ARRAY_HINT if text.lstrip().startswith("[") else ""
                raise row_error(path, line, f"not valid JSON ({error.msg}){hint}") from None
            if not isinstance(row, dict):
                hint = _ARRAY_HINT if isinstance(row, list) else ""
                raise row_error(path, line, f"expected a JSON object, got {type(row).__name__}{hint}")
            yield line, row
