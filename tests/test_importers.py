"""Importers: MovieLens (100K, latest, the `::` releases) and CSV / JSON Lines files."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kairos.cli import app
from kairos.config import Settings
from kairos.datasets.files import import_events_file, import_items_file
from kairos.datasets.movielens import ImportReport, import_movielens
from kairos.engine import Engine
from kairos.store import EventRecord


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(Settings(db_path=tmp_path / "k.db"))
    yield eng
    eng.close()


def shared_dataset(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_dir():
        pytest.skip(f"{name} not found at {path}")
    return path


def stored_events(engine: Engine) -> list[EventRecord]:
    return [event for batch in engine.store.iter_events() for event in batch]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def assert_nothing_stored(engine: Engine) -> None:
    assert engine.store.count_events() == 0
    assert list(engine.store.iter_items()) == []
    assert engine.stats()["events"] == 0


# -- MovieLens, shared datasets ------------------------------------------------------------


def test_movielens_100k(engine: Engine, data_dir: Path) -> None:
    report = import_movielens(engine, shared_dataset(data_dir, "ml-100k"), quiet=True)

    assert (report.format, report.users, report.items, report.events) == ("ml-100k", 943, 1682, 100_000)
    assert engine.store.count_events() == 100_000
    assert engine.stats()["users"] == 943 and engine.stats()["items"] == 1682
    toy_story = engine.get_item("1")
    assert toy_story.title == "Toy Story (1995)"
    assert "Animation" in toy_story.categories
    assert toy_story.attributes["year"] == 1995
    assert toy_story.attributes["release_date"] == "1995-01-01"
    assert toy_story.text.startswith("Toy Story (1995). Genres: Animation, Children's, Comedy")
    assert engine.get_item("267").categories == []  # the "unknown" genre is no category
    profile = engine.store.get_user("1")
    assert profile is not None
    assert profile.attributes == {"age": 24, "gender": "M", "occupation": "technician", "zip": "85711"}

    events = stored_events(engine)
    assert all(e.type == "rating" and 1 <= e.value <= 5 for e in events)  # type: ignore[operator]
    keys = [(e.timestamp, int(e.user_id), int(e.item_id)) for e in events]
    assert keys == sorted(keys)
    first_toy_story = min(e.timestamp for e in events if e.item_id == "1")
    assert toy_story.created_at == first_toy_story
    assert "MovieLens ml-100k: 1,682 items, 943 users, 100,000 rating events" in str(report)


def test_movielens_latest_small(engine: Engine, data_dir: Path) -> None:
    report = import_movielens(engine, shared_dataset(data_dir, "ml-latest-small"), quiet=True)

    assert (report.format, report.users, report.items, report.events) == (
        "ml-latest", 610, 9742, 100_836,
    )
    assert report.tags == 3683
    assert engine.store.count_events() == 100_836
    assert engine.stats()["users"] == 610
    assert {e.value for e in stored_events(engine)} >= {0.5, 3.5, 5.0}

    toy_story = engine.get_item("1")
    assert toy_story.title == "Toy Story (1995)"
    assert toy_story.attributes["imdb_id"] == "0114709"  # a string: the leading zero stays
    assert "Tags: " in toy_story.text and "pixar" in toy_story.text.casefold()
    step_brothers = engine.get_item("60756")  # tagged funny, Highly quotable, will ferrell, ...
    assert "funny" in step_brothers.text and "will ferrell" in step_brothers.text
    no_genre = engine.get_item("114335")  # La cravate (1957): "(no genres listed)"
    assert no_genre.categories == [] and no_genre.attributes["year"] == 1957


# -- MovieLens, the `::` releases (written here) ---------------------------------------------


def write_dat_release(folder: Path, with_users: bool = True) -> Path:
    folder.mkdir()
    write(folder / "movies.dat",
          "1::Toy Story (1995)::Animation|Children's|Comedy\n"
          "52::Misérables, Les (1995)::Drama|Musical\n"
          "99::Never Rated (2000)::Drama\n",
          encoding="latin-1" if with_users else "utf-8")
    write(folder / "ratings.dat",
          "2::52::4::978300800\n"
          "1::1::5::978300760\n"
          "2::1::3::978300760\n"
          "1::52::2::978300900\n")
    if with_users:
        write(folder / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder


def test_movielens_1m_dat_format(engine: Engine, tmp_path: Path) -> None:
    report = import_movielens(engine, write_dat_release(tmp_path / "ml-1m"), quiet=True)

    assert (report.format, report.users, report.items, report.events) == ("ml-1m", 2, 3, 4)
    les_mis = engine.get_item("52")
    assert les_mis.title == "Misérables, Les (1995)"  # latin-1 decoded
    assert les_mis.categories == ["Drama", "Musical"]
    assert les_mis.created_at == 978300800
    assert engine.get_item("99").created_at == 0  # never rated
    user = engine.store.get_user("1")
    assert user is not None
    assert user.attributes == {
        "age": 1, "age_group": "Under 18", "gender": "F", "occupation": "K-12 student", "zip": "48067",
    }
    events = stored_events(engine)
    assert [(e.user_id, e.item_id, e.value) for e in events] == [
        ("1", "1", 5.0), ("2", "1", 3.0), ("2", "52", 4.0), ("1", "52", 2.0),
    ]


def test_movielens_10m_dat_format_with_tags(engine: Engine, tmp_path: Path) -> None:
    folder = write_dat_release(tmp_path / "ml-10m", with_users=False)
    write(folder / "ratings.dat", "7::1::3.5::978300760\n")
    write(folder / "tags.dat",
          "7::1::pixar::978300761\n8::1::fun::978300762\n9::1::Pixar::978300763\n9::52::a::b::1\n")

    report = import_movielens(engine, folder, quiet=True)

    assert (report.format, report.users, report.events, report.tags) == ("ml-10m", 1, 1, 4)
    assert engine.get_item("1").text == (
        "Toy Story (1995). Genres: Animation, Children's, Comedy. Tags: pixar, fun."
    )
    assert "Tags: a::b." in engine.get_item("52").text
    assert engine.get_item("52").title == "Misérables, Les (1995)"  # UTF-8 this time
    assert stored_events(engine)[0].value == 3.5
    assert engine.store.get_user("7") is None  # no users.dat: no profiles


@pytest.mark.parametrize(("line", "needle"), [
    ("1::52::7::978300900", "value: of a rating must be within 0.5-5"),
    ("1::52::4", "expected UserID::MovieID::Rating::Timestamp, got 3 fields"),
    ("1::x::4::978300900", "ids must be integers"),
    ("1::52::4::-5", "timestamp"),
])
def test_movielens_bad_rating_stores_nothing(
    engine: Engine, tmp_path: Path, line: str, needle: str
) -> None:
    folder = write_dat_release(tmp_path / "ml-1m")
    write(folder / "ratings.dat", "1::1::5::978300760\n2::1::3::978300760\n" + line + "\n")

    with pytest.raises(ValueError) as caught:
        import_movielens(engine, folder, quiet=True)

    assert "ratings.dat, line 3" in str(caught.value) and needle in str(caught.value)
    assert_nothing_stored(engine)


def test_movielens_bad_movie_or_folder(engine: Engine, tmp_path: Path) -> None:
    folder = write_dat_release(tmp_path / "ml-1m")
    write(folder / "movies.dat", "1::Toy Story (1995)::Animation\nfive::Five::Drama\n")
    with pytest.raises(ValueError, match=r"movies\.dat, line 2: movie id must be an integer"):
        import_movielens(engine, folder, quiet=True)
    with pytest.raises(ValueError, match="no MovieLens ratings found"):
        import_movielens(engine, tmp_path, quiet=True)
    assert_nothing_stored(engine)


def test_import_report_reads_well() -> None:
    report = ImportReport("ml-1m", items=3883, users=6040, events=1_000_209, seconds=12.34)
    assert str(report) == "MovieLens ml-1m: 3,883 items, 6,040 users, 1,000,209 rating events in 12.3s"


# -- CSV and JSON Lines files ----------------------------------------------------------------


EVENTS_CSV = """user_id,item_id,type,timestamp,value,context
u1,i1,view,1700000000,,
u1,i2,rating,2023-11-14T22:13:21Z,4.5,
u2,i1,click,1700000002,,"{""page"": ""home""}"
"""

ITEMS_CSV = """item_id,title,text,categories,attributes,created_at,available
i1,First,"A first, quoted item",books|sci-fi,"{""pages"": 320}",1700000000,
i2,Second,,,,,false
"""


def test_events_csv(engine: Engine, tmp_path: Path) -> None:
    count = import_events_file(engine, write(tmp_path / "events.csv", EVENTS_CSV), quiet=True)

    assert count == 3
    assert stored_events(engine) == [
        EventRecord("u1", "i1", "view", 1_700_000_000.0, None, None),
        EventRecord("u1", "i2", "rating", 1_700_000_001.0, 4.5, None),
        EventRecord("u2", "i1", "click", 1_700_000_002.0, None, {"page": "home"}),
    ]
    assert engine.stats()["users"] == 2


def test_events_jsonl(engine: Engine, tmp_path: Path) -> None:
    rows = [
        {"user_id": "u1", "item_id": "i1", "type": "purchase", "timestamp": 1_700_000_000},
        {"user_id": "u2", "item_id": "i1", "type": "rating", "value": 2, "context": {"device": "tv"}},
    ]
    path = write(tmp_path / "events.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    before = time.time()

    assert import_events_file(engine, path, quiet=True) == 2

    first, second = stored_events(engine)
    assert first == EventRecord("u1", "i1", "purchase", 1_700_000_000.0, None, None)
    assert (second.value, second.context) == (2.0, {"device": "tv"})
    assert second.timestamp >= before  # no timestamp: the time of the import


def test_items_csv(engine: Engine, tmp_path: Path) -> None:
    count = import_items_file(engine, write(tmp_path / "items.csv", ITEMS_CSV), quiet=True)

    assert count == 2
    first, second = engine.get_item("i1"), engine.get_item("i2")
    assert (first.title, first.text, first.categories) == ("First", "A first, quoted item", ["books", "sci-fi"])
    assert first.attributes == {"pages": 320} and first.created_at == 1_700_000_000
    assert (second.categories, second.attributes, second.available) == ([], {}, False)
    assert engine.stats()["available_items"] == 1


def test_items_ndjson(engine: Engine, tmp_path: Path) -> None:
    rows = [
        {"item_id": "a", "title": "Alpha", "categories": ["x"], "attributes": {"price": 9.5}},
        {"item_id": "b", "text": "Beta", "available": True, "created_at": "2024-01-01T00:00:00Z"},
    ]
    path = write(tmp_path / "items.ndjson", "\n".join(json.dumps(row) for row in rows))

    assert import_items_file(engine, path, quiet=True) == 2
    assert engine.get_item("a").attributes == {"price": 9.5}
    assert engine.get_item("b").created_at == 1_704_067_200


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("events.csv", EVENTS_CSV + "u3,i9,teleport,1700000003,,\n", "events.csv, line 5: type: Input should be"),
    ("events.csv", EVENTS_CSV + "u3,i9,rating,1700000003,,\n", "line 5: value: is required for a rating"),
    ("events.csv", EVENTS_CSV + "u3,i9,view,1700000003,,{oops\n", "line 5: context: not valid JSON"),
    ("events.csv", EVENTS_CSV + "u3,i9,view,1700000003,,,extra\n", "line 5: 7 cells but the header has 6"),
    ("events.jsonl", '{"user_id": "u", "item_id": "i", "type": "view"}\n{"user_id": ""}\n',
     "events.jsonl, line 2: user_id: must not be empty"),
    ("events.jsonl", '{"user_id": "u", "item_id": "i", "type": "view", "colour": 1}\n',
     "line 1: colour: Extra inputs are not permitted"),
    ("events.json", '[{"user_id": "u", "item_id": "i", "type": "view"}]\n', "JSON array is not JSON Lines"),
])
def test_a_bad_event_row_rejects_the_file(
    engine: Engine, tmp_path: Path, name: str, text: str, needle: str
) -> None:
    with pytest.raises(ValueError) as caught:
        import_events_file(engine, write(tmp_path / name, text), quiet=True)
    assert needle in str(caught.value)
    assert_nothing_stored(engine)


def test_a_bad_item_row_rejects_the_file(engine: Engine, tmp_path: Path) -> None:
    bad = ITEMS_CSV + "i3,Third,,,,not a time,\n"
    with pytest.raises(ValueError, match="items.csv, line 4: created_at: must be epoch seconds"):
        import_items_file(engine, write(tmp_path / "items.csv", bad), quiet=True)
    with pytest.raises(ValueError, match="unknown file type '.txt'"):
        import_items_file(engine, write(tmp_path / "items.txt", ITEMS_CSV), quiet=True)
    assert_nothing_stored(engine)


def test_cli_imports_a_file(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    result = CliRunner().invoke(
        app, ["import", "events", str(write(tmp_path / "e.csv", EVENTS_CSV)), "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    assert "imported 3 events" in result.output


@pytest.mark.sqlite_only  # two --db files are two logs only on SQLite (on PostgreSQL: one URL)
def test_cli_refuses_a_second_import_unless_appending(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kairos.cli import app

    events = tmp_path / "events.jsonl"
    events.write_text('{"user_id": "u", "item_id": "i", "type": "view", "timestamp": 1}\n')
    db = str(tmp_path / "twice.db")
    runner = CliRunner()
    assert runner.invoke(app, ["import", "events", str(events), "--db", db]).exit_code == 0
    second = runner.invoke(app, ["import", "events", str(events), "--db", db])
    assert second.exit_code == 1 and "--append" in second.output
    assert runner.invoke(app, ["import", "events", str(events), "--db", db, "--append"]).exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_id": "u", "item_id": "i", "type": "warp"}\n')
    failed = runner.invoke(app, ["import", "events", str(bad), "--db", str(tmp_path / "bad.db")])
    assert failed.exit_code == 1 and "line 1" in failed.output and "Traceback" not in failed.output
