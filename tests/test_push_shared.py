"""Push state shared by processes and nodes: what one changes, the others' decisions see."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kairos.config import Settings
from kairos.push.database import PushDatabase, SQLitePushDatabase
from kairos.push.preferences import Preferences
from kairos.push.schema import PushPreferences

OpenDatabase = Callable[[], PushDatabase]


@pytest.fixture(params=["sqlite", "postgres"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenDatabase]:
    """Opens push's database again (a connection of its own, as another process would)."""
    opened: list[PushDatabase] = []

    def open_one() -> PushDatabase:
        if request.param == "sqlite":
            found: PushDatabase = SQLitePushDatabase(tmp_path / "push.db", "NORMAL")
        else:
            from kairos.push.postgres import PostgresPushDatabase

            found = PostgresPushDatabase(request.getfixturevalue("postgres_url"))
        opened.append(found)
        return found

    yield open_one
    for db in opened:
        db.close()


def test_consent_changed_on_another_node_holds_for_the_next_decision(open_db: OpenDatabase) -> None:
    settings = Settings()
    decider, api = Preferences(open_db(), settings), Preferences(open_db(), settings)
    assert decider.for_policy("u1").opt_out is False
    api.set("u1", PushPreferences(opt_out=True), 1.0)
    api.set("u2", PushPreferences(timezone="Asia/Tokyo"), 2.0)
    decider.refresh()  # what the decider does before each decision
    assert decider.for_policy("u1").opt_out is True
    assert decider.for_policy("u2").timezone == "Asia/Tokyo"
    assert api.get("u1").opt_out is True  # the API reads the row itself

    api.forget("u1")
    api.set("u2", PushPreferences(timezone="Europe/Paris"), 3.0)
    decider.refresh()
    assert decider.for_policy("u1").customised is False  # forgotten elsewhere: gone here too
    assert decider.for_policy("u2").timezone == "Europe/Paris"
    assert decider.stored("u1") is None
