"""`AsyncKairos`: the asyncio client (httpx), the same methods as `Kairos`, awaited."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from kairos.client import calls
from kairos.client.calls import Call
from kairos.client.errors import Unavailable, error_from, retry_after
from kairos.client.retry import Retries
from kairos.client.sync import batches, connection_settings
from kairos.push.schema import Notification
from kairos.schema import Event, Recommendations

P = ParamSpec("P")
T = TypeVar("T")


def endpoint(build: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncKairos, P], Coroutine[Any, Any, T]]:
    """An async client method that sends what `build` (in calls.py) describes."""

    @functools.wraps(build)
    async def method(self: AsyncKairos, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.send(build(*args, **kwargs))

    return method


class AsyncKairos:
    """`Kairos` for asyncio: `async with AsyncKairos(url) as kairos: await kairos.recommendations("u1")`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout_s: float = 30.0,
                 retries: Retries | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        url, headers = connection_settings(base_url, api_key)
        self.base_url = url
        self.retries = retries or Retries()
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s, transport=transport)

    async def send(self, call: Call[T]) -> T:
        """Send one call (with its retries) and read the answer."""
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, params=call.params or None,
                                                    json=call.json, headers=call.headers or None)
            except httpx.TransportError as error:
                if not self.retries.after_error(call, attempt, error):
                    raise Unavailable(f"{call.method} {call.path}: {error!r}") from error
                await asyncio.sleep(self.retries.wait_s(attempt))
            else:
                if response.is_success:
                    return call.parse(response.json())
                if not self.retries.after_status(call, attempt, response):
                    raise error_from(response)
                await asyncio.sleep(self.retries.wait_s(attempt, retry_after(response)))
            attempt += 1

    async def send_events(self, events: Iterable[Event | Mapping[str, Any]], batch_size: int = 1000) -> int:
        """As `Kairos.send_events`: batches one after another, each stored once."""
        accepted = 0
        for batch in batches(events, batch_size):
            accepted += (await self.send(calls.events(batch))).accepted
        return accepted

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

    def notification_stream(self, user_id: str) -> AsyncStream[Notification]:
        """`async with kairos.notification_stream("u1") as stream: async for n in stream: ...`"""
        return AsyncStream(self._http, calls.notification_stream(user_id), "notification", ready="ready")

    def recommendation_stream(self, user_id: str, n: int = 10) -> AsyncStream[Recommendations]:
        return AsyncStream(self._http, calls.recommendation_stream(user_id, n), "recommendations")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.aclose()


class AsyncStream(Generic[T]):
    """A server-sent event stream as an async iterator of the API's models."""

    def __init__(self, http: httpx.AsyncClient, call: Call[T], event: str, ready: str | None = None) -> None:
        self._http, self._call, self._event, self._ready = http, call, event, ready
        self._opened: Any = None
        self._events: AsyncIterator[ServerSentEvent] | None = None

    async def __aenter__(self) -> AsyncStream[T]:
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        self._opened = aconnect_sse(self._http, self._call.method, self._call.path, params=self._call.params,
                                    timeout=timeout)
        source = await self._opened.__aenter__()
        if not source.response.is_success:
            await source.response.aread()
            error = error_from(source.response)
            await self._opened.__aexit__(None, None, None)
            raise error
        self._events = source.aiter_sse()
        if self._ready is not None:
            async for message in self._events:
                if message.event == self._ready:
                    break
        return self

    async def __aiter__(self) -> AsyncIterator[T]:
        if self._events is None:
            raise RuntimeError("use the stream in an `async with` block")
        async for message in self._events:
            if message.event == self._event:
                yield self._call.parse(json.loads(message.data))

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if self._opened is not None:
            await self._opened.__aexit__(kind, error, trace)
            self._opened = self._events = None
