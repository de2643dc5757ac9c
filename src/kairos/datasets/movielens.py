"""Import a MovieLens release (100K, 1M, 10M or the `latest` CSV family) into an Engine.

Movies become items (genres as categories, tags folded into the text), users with a
profile become users, ratings become `rating` events replayed in time order. The
whole folder is parsed and validated before the first write, so a malformed file
raises a ValueError naming its line and leaves the store untouched.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from kairos.datasets.files import BATCH_SIZE, describe_validation_error, row_error
from kairos.engine import Engine
from kairos.progress import progress
from kairos.schema import Event, Item, User
from kairos.store import EventRecord

ITEM_CHUNK = 5_000
MAX_TAGS_IN_TEXT = 20

# u.genre's list, for a 100K folder that lacks that file.
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
# How each release says "no genre": not a category anyone can browse.
NO_GENRE = frozenset({"(no genres listed)", "unknown"})

# users.dat codes of the 1M release (see its README).
AGE_GROUPS_1M = {
    1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+",
}
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)

_YEAR = re.compile(r"\((\d{4})[^()]*\)\s*$")

Rows = Iterator[tuple[int, list[str]]]


@dataclass
class ImportReport:
    """What an import stored, for the CLI and for logs."""

    format: str
    items: int
    users: int
    events: int
    tags: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        tags = f", {self.tags:,} tags" if self.tags else ""
        return (
            f"MovieLens {self.format}: {self.items:,} items, {self.users:,} users, "
            f"{self.events:,} rating events{tags} in {self.seconds:.1f}s"
        )


@dataclass
class Ratings:
    """A ratings file as columns, in file order (ids as the integers MovieLens uses)."""

    path: Path
    users: np.ndarray
    items: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def event(self, row: int) -> dict[str, Any]:
        return {
            "user_id": str(self.users[row]), "item_id": str(self.items[row]), "type": "rating",
            "value": float(self.values[row]), "timestamp": float(self.timestamps[row]),
        }


@dataclass
class Movie:
    line: int
    item_id: str
    title: str
    genres: list[str]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Profile:
    line: int
    user_id: str
    attributes: dict[str, Any]


@dataclass
class Release:
    """A parsed MovieLens folder, not yet validated against the schema."""

    format: str
    ratings: Ratings
    movies_path: Path
    movies: list[Movie]
    users_path: Path | None = None
    profiles: list[Profile] = field(default_factory=list)
    tags: dict[str, Counter[str]] = field(default_factory=dict)
    tag_spellings: dict[str, str] = field(default_factory=dict)
    tag_count: int = 0


def import_movielens(engine: Engine, path: Path, quiet: bool = False) -> ImportReport:
    """Import the MovieLens release in folder `path`; its format is detected from the files."""
    started = time.perf_counter()
    release = read_release(Path(path))
    ratings = release.ratings
    validate_ratings(ratings)
    order = np.lexsort((ratings.items, ratings.users, ratings.timestamps))
    items = _validated_items(release, _first_rating_times(ratings, order))
    users = _validated_users(release)

    for start in range(0, len(items), ITEM_CHUNK):
        engine.upsert_items(items[start : start + ITEM_CHUNK])
    if users:
        engine.upsert_users(users)
    _ingest_ratings(engine, ratings, order, quiet)

    user_ids = {profile.user_id for profile in release.profiles}
    user_ids.update(str(user) for user in np.unique(ratings.users).tolist())
    return ImportReport(
        format=release.format, items=len(items), users=len(user_ids), events=len(ratings),
        tags=release.tag_count, seconds=time.perf_counter() - started,
    )


# -- detection and reading ---------------------------------------------------------------


def read_release(folder: Path) -> Release:
    """Parse the files of a MovieLens folder, choosing the reader by the files present."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (expected a MovieLens release folder)")
    if (folder / "u.data").is_file():
        return _read_100k(folder)
    if (folder / "ratings.dat").is_file():
        return _read_dat(folder)
    if (folder / "ratings.csv").is_file():
        return _read_latest(folder)
    present = ", ".join(sorted(entry.name for entry in folder.iterdir())[:10]) or "nothing"
    raise ValueError(
        f"{folder}: no MovieLens ratings found (looked for u.data, ratings.dat, ratings.csv; "
        f"the folder holds {present})"
    )


def _read_100k(folder: Path) -> Release:
    genres = list(GENRES_100K)
    if (folder / "u.genre").is_file():
        genres = _read_genre_names(folder / "u.genre")
    ratings_path = folder / "u.data"
    ratings = _read_ratings(ratings_path, _dat_rows(ratings_path, "user item rating timestamp", None))
    movies_path = _require(folder / "u.item")
    shape = "|".join(["id", "title", "release date", "video release date", "IMDb URL", *genres])
    movies = []
    for line, fields in _dat_rows(movies_path, shape, "|"):
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise row_error(movies_path, line, f"genre flags must be 0 or 1, got {'|'.join(flags)}")
        movie = Movie(
            line, _movie_id(movies_path, line, fields[0]), fields[1].strip(),
            [name for name, flag in zip(genres, flags) if flag == "1"],
        )
        release_date = _iso_date(fields[2].strip())
        for name, value in (("release_date", release_date), ("video_release_date", fields[3].strip()),
                            ("imdb_url", fields[4].strip())):
            if value:
                movie.attributes[name] = value
        _add_year(movie, release_date)
        movies.append(movie)
    release = Release("ml-100k", ratings, movies_path, movies)
    users_path = folder / "u.user"
    if users_path.is_file():
        release.users_path = users_path
        for line, fields in _dat_rows(users_path, "id|age|gender|occupation|zip", "|"):
            user_id, age, gender, occupation, zip_code = (part.strip() for part in fields)
            release.profiles.append(Profile(line, _int_id(users_path, line, "user id", user_id), {
                "age": _int(users_path, line, "age", age), "gender": gender,
                "occupation": occupation, "zip": zip_code,
            }))
    return release


def _read_dat(folder: Path) -> Release:
    ratings_path = folder / "ratings.dat"
    shape = "UserID::MovieID::Rating::Timestamp"
    ratings = _read_ratings(ratings_path, _dat_rows(ratings_path, shape, "::"))
    movies_path = _require(folder / "movies.dat")
    movies = []
    for line, fields in _dat_rows(movies_path, "MovieID::Title::Genres", "::", at_least=True):
        movie = Movie(
            line, _movie_id(movies_path, line, fields[0]), "::".join(fields[1:-1]).strip(),
            [name.strip() for name in fields[-1].split("|") if name.strip()],
        )
        _add_year(movie)
        movies.append(movie)
    users_path = folder / "users.dat"
    release = Release("ml-1m" if users_path.is_file() else "ml-10m", ratings, movies_path, movies)
    if users_path.is_file():
        release.users_path = users_path
        for line, fields in _dat_rows(users_path, "UserID::Gender::Age::Occupation::Zip-code", "::"):
            user_id, gender, age, occupation, zip_code = (part.strip() for part in fields)
            age_code = _int(users_path, line, "age", age)
            job = _int(users_path, line, "occupation", occupation)
            attributes: dict[str, Any] = {
                "age": age_code, "gender": gender,
                "occupation": OCCUPATIONS_1M[job] if 0 <= job < len(OCCUPATIONS_1M) else str(job),
                "zip": zip_code,
            }
            if age_code in AGE_GROUPS_1M:
                attributes["age_group"] = AGE_GROUPS_1M[age_code]
            user = _int_id(users_path, line, "user id", user_id)
            release.profiles.append(Profile(line, user, attributes))
    tags_path = folder / "tags.dat"
    if tags_path.is_file():
        for line, fields in _dat_rows(tags_path, "UserID::MovieID::Tag::Timestamp", "::", at_least=True):
            _add_tag(release, _movie_id(tags_path, line, fields[1]), "::".join(fields[2:-1]))
    return release


def _read_latest(folder: Path) -> Release:
    ratings_path = folder / "ratings.csv"
    header = ("userId", "movieId", "rating", "timestamp")
    ratings = _read_ratings(ratings_path, _csv_rows(ratings_path, header))
    movies_path = _require(folder / "movies.csv")
    movies = []
    for line, (movie_id, title, genres) in _csv_rows(movies_path, ("movieId", "title", "genres")):
        movie = Movie(
            line, _movie_id(movies_path, line, movie_id), title.strip(),
            [name.strip() for name in genres.split("|") if name.strip()],
        )
        _add_year(movie)
        movies.append(movie)
    release = Release("ml-latest", ratings, movies_path, movies)
    links_path = folder / "links.csv"
    if links_path.is_file():
        by_id = {movie.item_id: movie for movie in movies}
        for line, (movie_id, imdb_id, tmdb_id) in _csv_rows(links_path, ("movieId", "imdbId", "tmdbId")):
            linked = by_id.get(_movie_id(links_path, line, movie_id))
            if linked is None:
                continue
            for name, value in (("imdb_id", imdb_id.strip()), ("tmdb_id", tmdb_id.strip())):
                if value:
                    linked.attributes[name] = value
    tags_path = folder / "tags.csv"
    if tags_path.is_file():
        for line, fields in _csv_rows(tags_path, ("userId", "movieId", "tag", "timestamp")):
            _add_tag(release, _movie_id(tags_path, line, fields[1]), fields[2])
    return release


def _read_ratings(path: Path, rows: Rows) -> Ratings:
    users: list[int] = []
    items: list[int] = []
    values: list[float] = []
    stamps: list[float] = []
    lines: list[int] = []
    for line, fields in rows:
        try:
            user, item, value, stamp = fields
            users.append(int(user))
            items.append(int(item))
            values.append(float(value))
            stamps.append(float(stamp))
        except ValueError:
            problem = f"ids must be integers, the rating and timestamp numbers: {fields}"
            raise row_error(path, line, problem) from None
        lines.append(line)
    try:
        return Ratings(
            path, np.array(users, dtype=np.int64), np.array(items, dtype=np.int64),
            np.array(values, dtype=np.float64), np.array(stamps, dtype=np.float64),
            np.array(lines, dtype=np.int64),
        )
    except OverflowError:
        raise ValueError(f"{path}: an id does not fit in 64 bits") from None


def _read_text(path: Path) -> str:
    """UTF-8 if the file decodes as such, else latin-1 (1M and 100K are latin-1, 10M UTF-8)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _split_lines(path: Path, separator: str | None) -> Rows:
    """Non-blank lines split by `separator` (None: any whitespace), numbered from 1.

    Split on "\\n" only: str.splitlines would also break latin-1 text at \\x85 and \\x1c."""
    for line, text in enumerate(_read_text(path).split("\n"), 1):
        text = text.rstrip("\r")
        if text.strip():
            yield line, text.split(separator)


def _dat_rows(path: Path, shape: str, separator: str | None, at_least: bool = False) -> Rows:
    """Rows with as many fields as `shape` names (or more, `at_least`: the last text field
    may itself contain the separator)."""
    count = len(shape.split(separator))
    for line, fields in _split_lines(path, separator):
        if len(fields) < count or (len(fields) > count and not at_least):
            problem = f"expected {shape}, got {len(fields)} fields: {fields[:count + 2]}"
            raise row_error(path, line, problem)
        yield line, fields


def _csv_rows(path: Path, header: tuple[str, ...]) -> Rows:
    """Data rows of a CSV whose first row must be `header`, numbered by starting line."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    found = next(reader, None)
    if found is None or tuple(name.strip() for name in found) != header:
        raise row_error(path, 1, f"expected the header {','.join(header)}, got {found!r}")
    start = reader.line_num + 1
    for fields in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in fields):
            continue
        if len(fields) != len(header):
            problem = f"expected {','.join(header)}, got {len(fields)} fields: {fields}"
            raise row_error(path, line, problem)
        yield line, fields


def _read_genre_names(path: Path) -> list[str]:
    named: dict[int, str] = {}
    for line, fields in _split_lines(path, "|"):
        if len(fields) != 2:
            raise row_error(path, line, f"expected name|index, got {'|'.join(fields)!r}")
        named[_int(path, line, "genre index", fields[1])] = fields[0].strip()
    if sorted(named) != list(range(len(named))):
        raise ValueError(f"{path}: genre indices must be 0..{len(named) - 1}, got {sorted(named)}")
    return [named[index] for index in range(len(named))]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{path}: missing (the folder has ratings but no movie file)")
    return path


def _int(path: Path, line: int, what: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise row_error(path, line, f"{what} must be an integer, got {text!r}") from None


def _int_id(path: Path, line: int, what: str, text: str) -> str:
    """MovieLens ids are integers; normalised so that "007" in one file meets "7" in another."""
    return str(_int(path, line, what, text))


def _movie_id(path: Path, line: int, text: str) -> str:
    return _int_id(path, line, "movie id", text)


def _iso_date(text: str) -> str:
    """100K release dates look like 01-Jan-1995."""
    if not text:
        return ""
    try:
        return datetime.strptime(text, "%d-%b-%Y").date().isoformat()
    except ValueError:
        return text


def _add_year(movie: Movie, release_date: str = "") -> None:
    found = _YEAR.search(movie.title)
    if found:
        movie.attributes["year"] = int(found.group(1))
    elif release_date[:4].isdigit():
        movie.attributes["year"] = int(release_date[:4])


def _add_tag(release: Release, movie_id: str, tag: str) -> None:
    """Count a tag case-insensitively; the first spelling seen is the one shown."""
    tag = " ".join(tag.split())
    if not tag:
        return
    key = tag.casefold()
    release.tag_spellings.setdefault(key, tag)
    release.tags.setdefault(movie_id, Counter())[key] += 1
    release.tag_count += 1


# -- validation ---------------------------------------------------------------------------


def _column_adapter(name: str) -> TypeAdapter[list[Any]]:
    """Validates a list of values exactly as Event validates its field `name`."""
    info = Event.model_fields[name]
    annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return TypeAdapter(list[annotation])  # type: ignore[valid-type]


def validate_ratings(ratings: Ratings) -> None:
    """Every rating must be a valid `Event`; raise naming the first bad line.

    Validating events one by one costs 4-9 us each, seconds per million ratings. A
    rating's fields are checked independently of each other (the type is fixed), so each
    distinct id and timestamp goes through its Event field type once and each distinct
    value through a whole Event (under a second for 1M ratings); only if something
    fails are the rows validated in order, to name the first bad line.
    """
    if not len(ratings):
        return
    base = ratings.event(0)
    try:
        Event.model_validate(base)
        for name, column in (("user_id", ratings.users), ("item_id", ratings.items)):
            _column_adapter(name).validate_python([str(v) for v in np.unique(column).tolist()])
        _column_adapter("timestamp").validate_python(np.unique(ratings.timestamps).tolist())
        for value in np.unique(ratings.values).tolist():
            Event.model_validate({**base, "value": value})
    except ValidationError:
        _find_bad_rating(ratings)


def _find_bad_rating(ratings: Ratings) -> None:
    for row in range(len(ratings)):
        try:
            Event.model_validate(ratings.event(row))
        except ValidationError as error:
            raise row_error(
                ratings.path, int(ratings.lines[row]), describe_validation_error(error)
            ) from None


def _first_rating_times(ratings: Ratings, order: np.ndarray) -> dict[str, float]:
    """Each rated movie's first rating time (`order` sorts the ratings by time)."""
    items, first = np.unique(ratings.items[order], return_index=True)
    times = ratings.timestamps[order][first]
    return {str(item): stamp for item, stamp in zip(items.tolist(), times.tolist())}


def _validated_items(release: Release, first_rated: dict[str, float]) -> list[Item]:
    items = []
    seen: set[str] = set()
    for movie in release.movies:
        if movie.item_id in seen:
            raise row_error(release.movies_path, movie.line, f"movie id {movie.item_id} appears twice")
        seen.add(movie.item_id)
        categories = [name for name in movie.genres if name not in NO_GENRE]
        tags = [release.tag_spellings[key]
                for key, _ in release.tags.get(movie.item_id, Counter()).most_common(MAX_TAGS_IN_TEXT)]
        try:
            items.append(Item.model_validate({
                "item_id": movie.item_id,
                "title": movie.title,
                "text": _describe(movie.title, categories, tags),
                "categories": categories,
                "attributes": movie.attributes,
                "created_at": first_rated.get(movie.item_id, 0.0),
            }))
        except ValidationError as error:
            raise row_error(release.movies_path, movie.line, describe_validation_error(error)) from None
    return items


def _describe(title: str, genres: list[str], tags: list[str]) -> str:
    """The item text that text models read: title, genres and what people tagged it."""
    parts = [title] if title else []
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    return ". ".join(parts) + ("." if parts else "")


def _validated_users(release: Release) -> list[User]:
    users = []
    for profile in release.profiles:
        try:
            users.append(User(user_id=profile.user_id, attributes=profile.attributes))
        except ValidationError as error:
            assert release.users_path is not None
            raise row_error(release.users_path, profile.line, describe_validation_error(error)) from None
    return users


# -- writing ------------------------------------------------------------------------------


def _ingest_ratings(engine: Engine, ratings: Ratings, order: np.ndarray, quiet: bool) -> None:
    """Ratings in time order (then user, item), in batches of validated records:
    `Engine.ingest` would only unpack an Event built per rating back into the same record."""
    with progress("importing ratings", len(ratings), quiet=quiet) as advance:
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            engine.ingest_records(_records(
                ratings.users[rows].tolist(), ratings.items[rows].tolist(),
                ratings.values[rows].tolist(), ratings.timestamps[rows].tolist(),
            ))
            advance(len(rows))


def _records(
    users: Iterable[int], items: Iterable[int], values: Iterable[float], stamps: Iterable[float],
) -> list[EventRecord]:
    return [
        EventRecord(str(user), str(item), "rating", stamp, value, None)
        for user, item, value, stamp in zip(users, items, values, stamps)
    ]
