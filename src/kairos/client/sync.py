"""`Kairos`: the blocking client (httpx)."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from kairos import __version__
from kairos.client import calls
from kairos.client.calls import Call
from kairos.client.errors import Unavailable, error_from, retry_after
from kairos.client.retry import Retries
from kairos.push.schema import Notification
from kairos.schema import MAX_BATCH_EVENTS, Event, Recommendations

P = ParamSpec("P")
T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"


def endpoint(build: Callable[P, Call[T]]) -> Callable[Concatenate[Kairos, P], T]:
    """A client method that sends what `build` (in calls.py) describes."""

    @functools.wraps(build)
    def method(self: Kairos, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.send(build(*args, **kwargs))

    return method


def connection_settings(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The server (KAIROS_URL) and the headers every request carries (KAIROS_API_KEY)."""
    api_key = api_key if api_key is not None else os.environ.get("KAIROS_API_KEY")
    headers = {"User-Agent": f"kairos-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return (base_url or os.environ.get("KAIROS_URL") or DEFAULT_URL).rstrip("/"), headers


def batches(events: Iterable[Event | Mapping[str, Any]], size: int) -> Iterator[list[Event | Mapping[str, Any]]]:
    if not 1 <= size <= MAX_BATCH_EVENTS:
        raise ValueError(f"batch_size must be 1..{MAX_BATCH_EVENTS}, not {size}")
    batch: list[Event | Mapping[str, Any]] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Kairos:
    """A Kairos server. Every method answers with the API's own pydantic models and raises
    a KairosError subclass carrying the API's error code and the field it names.

    Calls that may safely be sent again are retried on 429 (after Retry-After), 5xx and
    lost connections, with exponential backoff; event batches carry an Idempotency-Key,
    so a retried batch is stored once.

        with Kairos("http://127.0.0.1:8000", api_key="...") as kairos:
            kairos.send_events([{"user_id": "u1", "item_id": "i1", "type": "click"}])
            for item in kairos.recommendations("u1", n=5).items: ...
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout_s: float = 30.0,
                 retries: Retries | None = None, transport: httpx.BaseTransport | None = None) -> None:
        url, headers = connection_settings(base_url, api_key)
        self.base_url = url
        self.retries = retries or Retries()
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s, transport=transport)

    def send(self, call: Call[T]) -> T:
        """Send one call (with its retries) and read the answer."""
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, params=call.params or None,
                                              json=call.json, headers=call.headers or None)
            except httpx.TransportError as error:
                if not self.retries.after_error(call, attempt, error):
                    raise Unavailable(f"{call.method} {call.path}: {error!r}") from error
                time.sleep(self.retries.wait_s(attempt))
            else:
                if response.is_success:
                    return call.parse(response.json())
                if not self.retries.after_status(call, attempt, response):
                    raise error_from(response)
                time.sleep(self.retries.wait_s(attempt, retry_after(response)))
            attempt += 1

    # -- events ---------------------------------------------------------------------------

    def send_events(self, events: Iterable[Event | Mapping[str, Any]], batch_size: int = 1000) -> int:
        """Send events in batches (each stored once, however often it is retried); returns
        how many were accepted. A rejected batch raises InvalidRequest naming the event
        (`details[0]["index"]` within the batch) and the field; earlier batches stay stored."""
        return sum(self.send(calls.events(batch)).accepted for batch in batches(events, batch_size))

    # -- the API, one method per endpoint (calls.py says what each sends) --------------------

    put_item = endpoint(calls.put_item)
    put_items = endpoint(calls.put_items)
    get_item = endpoint(calls.get_item)
    delete_item = endpoint(calls.delete_item)
    similar = endpoint(calls.similar)
    put_user = endpoint(calls.put_user)
    get_user = endpoint(calls.get_user)
    forget_user = endpoint(calls.forget_user)
    recommendations = endpoint(calls.recommendations)
    search = endpoint(calls.search)
    models = endpoint(calls.models)
    train = endpoint(calls.train)
    activate = endpoint(calls.activate)
    set_preferences = endpoint(calls.set_preferences)
    get_preferences = endpoint(calls.get_preferences)
    set_webhook = endpoint(calls.set_webhook)
    delete_webhook = endpoint(calls.delete_webhook)
    channels = endpoint(calls.channels)
    create_campaign = endpoint(calls.create_campaign)
    campaigns = endpoint(calls.campaigns)
    campaign = endpoint(calls.campaign)
    preview = endpoint(calls.preview)
    push_stats = endpoint(calls.push_stats)
    notifications = endpoint(calls.notifications)
    feedback = endpoint(calls.feedback)
    create_experiment = endpoint(calls.create_experiment)
    experiments = endpoint(calls.experiments)
    experiment = endpoint(calls.experiment)
    stop_experiment = endpoint(calls.stop_experiment)
    health = endpoint(calls.health)

    # -- live streams -----------------------------------------------------------------------

    def notification_stream(self, user_id: str) -> Stream[Notification]:
        """`with kairos.notification_stream("u1") as stream: for n in stream: ...`: each
        Notification the moment it is delivered. Subscribed once the `with` is entered."""
        return Stream(self._http, calls.notification_stream(user_id), "notification", ready="ready")

    def recommendation_stream(self, user_id: str, n: int = 10) -> Stream[Recommendations]:
        """The user's Recommendations now, then again each time their events change them."""
        return Stream(self._http, calls.recommendation_stream(user_id, n), "recommendations")

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class Stream(Generic[T]):
    """A server-sent event stream as an iterator of the API's models; connected on enter."""

    def __init__(self, http: httpx.Client, call: Call[T], event: str, ready: str | None = None) -> None:
        self._http, self._call, self._event, self._ready = http, call, event, ready
        self._opened: Any = None
        self._events: Iterator[ServerSentEvent] | None = None

    def __enter__(self) -> Stream[T]:
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)  # quiet streams are pinged
        self._opened = connect_sse(self._http, self._call.method, self._call.path, params=self._call.params,
                                   timeout=timeout)
        source = self._opened.__enter__()
        if not source.response.is_success:
            source.response.read()
            error = error_from(source.response)
            self._opened.__exit__(None, None, None)
            raise error
        self._events = source.iter_sse()
        if self._ready is not None:
            for message in self._events:
                if message.event == self._ready:
                    break
        return self

    def __iter__(self) -> Iterator[T]:
        if self._events is None:
            raise RuntimeError("use the stream in a `with` block")
        for message in self._events:
            if message.event == self._event:
                yield self._call.parse(json.loads(message.data))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._opened is not None:
            self._opened.__exit__(kind, error, trace)
            self._opened = self._events = None
