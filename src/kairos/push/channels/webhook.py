"""`webhook`: a signed JSON POST to the platform's endpoint, which reaches its users.

Body: {"notification_id","user_id","item_id","type","title","body","reason","p",
"campaign_id","created_at"}; headers `Idempotency-Key: <notification_id>` (the same on
every retry and after a crash) and `X-Kairos-Signature: sha256=<hex HMAC-SHA256 of the
raw body, keyed with the secret>`. 2xx is delivered; 5xx, 429, timeouts and connection
errors are retried with backoff; any other 4xx is failed (retrying cannot fix it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp

from kairos.clock import Clock
from kairos.config import Settings
from kairos.push.channels.base import retry_outcome
from kairos.push.database import PushDatabase, dumps
from kairos.push.outbox import Outcome
from kairos.push.schema import Notification, WebhookConfig

CONFIG_TTL_S = 1.0  # how stale a changed URL or secret may be in a running worker


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(notification: Notification) -> dict[str, Any]:
    return {"notification_id": notification.notification_id, "user_id": notification.user_id,
            "item_id": notification.item_id, "type": str(notification.type), "title": notification.title,
            "body": notification.body, "reason": notification.reason, "p": round(notification.p, 6),
            "campaign_id": notification.campaign_id, "created_at": notification.created_at}


class WebhookChannel:
    name = "webhook"

    def __init__(self, db: PushDatabase, settings: Settings, clock: Clock) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._config: WebhookConfig | None = None
        self._read_at = -CONFIG_TTL_S

    # -- configuration --------------------------------------------------------------------

    def config(self) -> WebhookConfig | None:
        if time.monotonic() - self._read_at >= CONFIG_TTL_S:
            self._config = read_config(self.db)
            self._read_at = time.monotonic()
        return self._config

    def invalidate(self) -> None:
        """Read the configuration again at the next use (it was just changed here)."""
        self._read_at = -CONFIG_TTL_S

    def reaches(self, user_id: str) -> bool:
        return self.config() is not None

    # -- delivery -------------------------------------------------------------------------

    async def send(self, notification: Notification) -> Outcome:
        config = self.config()
        settings = self.settings
        max_attempts = config.max_attempts if config and config.max_attempts else settings.push_webhook_max_attempts
        if config is None:
            return retry_outcome(notification, "no webhook configured", self.clock.now(), max_attempts,
                                 settings.push_retry_base_s, settings.push_retry_max_s)
        body = dumps(payload(notification)).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": notification.notification_id,
                   "X-Kairos-Signature": signature(config.secret, body)}
        timeout = aiohttp.ClientTimeout(total=config.timeout_s or settings.push_webhook_timeout_s)
        try:
            async with self._http().post(config.url, data=body, headers=headers, timeout=timeout,
                                         allow_redirects=False) as response:
                status = response.status
                body_text = await response.read()  # read to the end: the connection is then reused
                text = "" if 200 <= status < 300 else body_text[:200].decode(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            name = "Timeout" if isinstance(error, asyncio.TimeoutError) else type(error).__name__
            return retry_outcome(notification, f"{name}: {error}"[:500], self.clock.now(),
                                 max_attempts, settings.push_retry_base_s, settings.push_retry_max_s)
        if 200 <= status < 300:
            return Outcome(notification.notification_id, "delivered")
        error = f"HTTP {status}: {text}"
        if status >= 500 or status in (408, 425, 429):
            return retry_outcome(notification, error, self.clock.now(), max_attempts,
                                 settings.push_retry_base_s, settings.push_retry_max_s)
        return Outcome(notification.notification_id, "failed", error)

    def _http(self) -> aiohttp.ClientSession:
        # aiohttp, not httpx: httpx's async connection pool spent most of a delivery's CPU on
        # bookkeeping (benchmarks/push.py: 110/s against 500+/s).
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.settings.push_concurrency, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def read_config(db: PushDatabase) -> WebhookConfig | None:
    rows = db.query("SELECT config FROM push_channels WHERE name = 'webhook'")
    return WebhookConfig.model_validate(json.loads(rows[0][0])) if rows else None


def write_config(db: PushDatabase, config: WebhookConfig | None, now: float) -> None:
    with db.transaction() as connection:
        if config is None:
            connection.execute("DELETE FROM push_channels WHERE name = 'webhook'")
        else:
            connection.execute("INSERT INTO push_channels (name, config, updated_at) VALUES ('webhook', ?, ?) "
                               "ON CONFLICT (name) DO UPDATE SET config = excluded.config, "
                               "updated_at = excluded.updated_at", (config.model_dump_json(), now))
