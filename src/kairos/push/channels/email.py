"""`email`: one message per notification over SMTP (host, port and sender in settings) to
the address in the user's `email` attribute. SMTP has no idempotency key: a message a
crash interrupted after the server accepted it may arrive twice, each with the same
Message-ID (<notification_id@kairos>), which mail clients use to fold duplicates."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable
from email.message import EmailMessage

from kairos.clock import Clock
from kairos.config import Settings
from kairos.push.channels.base import retry_outcome
from kairos.push.outbox import Outcome
from kairos.push.schema import Notification

AddressLookup = Callable[[str], str | None]


class EmailChannel:
    name = "email"

    def __init__(self, settings: Settings, clock: Clock, address_of: AddressLookup) -> None:
        self.settings = settings
        self.clock = clock
        self.address_of = address_of

    def reaches(self, user_id: str) -> bool:
        return bool(self.settings.push_smtp_host) and bool(self.address_of(user_id))

    def message(self, notification: Notification, to: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.push_smtp_from
        message["To"] = to
        message["Subject"] = notification.title or "A recommendation for you"
        message["Message-ID"] = f"<{notification.notification_id}@kairos>"
        message["X-Kairos-Notification"] = notification.notification_id
        lines = [notification.body]
        if notification.reason:
            lines.append(f"\nWhy: {notification.reason}")
        message.set_content("\n".join(lines))
        return message

    def _send(self, notification: Notification, to: str) -> None:
        settings = self.settings
        with smtplib.SMTP(settings.push_smtp_host, settings.push_smtp_port,
                          timeout=settings.push_webhook_timeout_s) as smtp:
            if settings.push_smtp_starttls:
                smtp.starttls()
            if settings.push_smtp_username:
                smtp.login(settings.push_smtp_username, settings.push_smtp_password)
            smtp.send_message(self.message(notification, to))

    async def send(self, notification: Notification) -> Outcome:
        settings = self.settings
        to = self.address_of(notification.user_id)
        if not settings.push_smtp_host or not to:
            return Outcome(notification.notification_id, "failed", "no SMTP server or no email address")
        try:
            await asyncio.to_thread(self._send, notification, to)
        except smtplib.SMTPRecipientsRefused as error:
            return Outcome(notification.notification_id, "failed", f"recipient refused: {error}"[:500])
        except (smtplib.SMTPException, OSError) as error:
            code = getattr(error, "smtp_code", None)
            if isinstance(code, int) and 500 <= code < 600:  # permanent SMTP failure
                return Outcome(notification.notification_id, "failed", f"SMTP {code}: {error}"[:500])
            return retry_outcome(notification, f"{type(error).__name__}: {error}"[:500], self.clock.now(),
                                 settings.push_webhook_max_attempts, settings.push_retry_base_s,
                                 settings.push_retry_max_s)
        return Outcome(notification.notification_id, "delivered")

    async def close(self) -> None:
        return None
