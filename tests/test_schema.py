from __future__ import annotations

import pytest
from pydantic import ValidationError

from kairos.schema import Event, EventBatch, Item, User


def field_of(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[object, ...]]:
    return [tuple(e["loc"]) for e in exc.value.errors()]


def test_timestamps_accept_epoch_seconds_and_iso_8601() -> None:
    assert Event(user_id="u", item_id="i", type="view", timestamp=1700000000).timestamp == 1.7e9
    assert Event(user_id="u", item_id="i", type="view", timestamp="1700000000.5").timestamp == 1700000000.5
    iso = Event(user_id="u", item_id="i", type="view", timestamp="2023-11-14T22:13:20Z")
    assert iso.timestamp == 1700000000.0
    naive = Event(user_id="u", item_id="i", type="view", timestamp="2023-11-14T22:13:20")
    assert naive.timestamp == 1700000000.0  # naive = UTC
    offset = Event(user_id="u", item_id="i", type="view", timestamp="2023-11-15T00:13:20+02:00")
    assert offset.timestamp == 1700000000.0
    assert Event(user_id="u", item_id="i", type="view").timestamp is None


@pytest.mark.parametrize("bad", ["yesterday", -5, 1.7e12, float("nan"), True, [1]])
def test_bad_timestamps_are_rejected(bad: object) -> None:
    with pytest.raises(ValidationError) as exc:
        Event(user_id="u", item_id="i", type="view", timestamp=bad)
    assert field_of(exc) == [("timestamp",)]


def test_rating_needs_a_value_in_range() -> None:
    assert Event(user_id="u", item_id="i", type="rating", value=0.5).value == 0.5
    for value in (None, 0.0, 5.5, float("inf")):
        with pytest.raises(ValidationError) as exc:
            Event(user_id="u", item_id="i", type="rating", value=value)
        assert field_of(exc) == [("value",)]


@pytest.mark.parametrize("bad", ["", "x" * 257, "tab\there", "line\nbreak", "\x00"])
def test_ids_are_1_to_256_printable_characters(bad: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Event(user_id=bad, item_id="i", type="view")
    assert field_of(exc) == [("user_id",)]
    assert Event(user_id="é" * 256, item_id="sku 1/ü", type="view").user_id == "é" * 256


def test_unknown_type_and_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        Event(user_id="u", item_id="i", type="teleport")
    assert field_of(exc) == [("type",)]
    with pytest.raises(ValidationError) as exc:
        Event.model_validate({"user_id": "u", "item_id": "i", "type": "view", "colour": "red"})
    assert field_of(exc) == [("colour",)]


def test_text_is_limited_to_32_kib_of_utf8() -> None:
    Item(item_id="i", text="x" * 32 * 1024)
    with pytest.raises(ValidationError):
        Item(item_id="i", text="é" * 16 * 1024 + "x")  # 32 KiB + 1 byte
    with pytest.raises(ValidationError):
        User(user_id="u", text="x" * (32 * 1024 + 1))


def test_batches_hold_1_to_10000_events() -> None:
    event = {"user_id": "u", "item_id": "i", "type": "view"}
    assert len(EventBatch.model_validate({"events": [event] * 10_000}).events) == 10_000
    for size in (0, 10_001):
        with pytest.raises(ValidationError):
            EventBatch.model_validate({"events": [event] * size})
