"""The outbox: every notification is a durable row before anything is sent.

    scheduled -> sending -> delivered
                        \\-> scheduled again (retry later) -> ... -> dead
                        \\-> failed (refused for good)
    suppressed | expired  (decided not to send, with the reason)

A worker claims due rows (`sending`, with a lease), delivers them, and records the
outcome. A worker that dies mid-send leaves its rows `sending`; once their lease
runs out any worker sends them again, with the same notification id as the
idempotency key, so a receiver that honours it sees each notification once and
nothing is lost.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kairos.push.database import Connection, PushDatabase, dumps, meta_in, set_meta
from kairos.push.policy import ACTIVE, Past
from kairos.push.schema import Notification, Status

_COLUMNS = ("id", "user_id", "item_id", "items", "type", "channel", "title", "body", "reason", "p",
            "campaign_id", "status", "suppressed_reason", "created_at", "due_at", "expires_at", "attempts",
            "last_error", "delivered_at", "opened_at", "clicked_at", "dismissed_at")
_SELECT = ", ".join(_COLUMNS)
_ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(ACTIVE)) + ")"


@dataclass(slots=True)
class NewNotification:
    id: str
    dedupe_key: str  # a replayed trigger makes the same key, and the second row is dropped
    user_id: str
    item_id: str
    type: str
    status: str
    created_at: float
    due_at: float
    expires_at: float
    p: float = 0.0
    title: str = ""
    body: str = ""
    reason: str = ""
    channel: str | None = None
    suppressed_reason: str | None = None
    campaign_id: str | None = None
    trigger_id: int | None = None
    items: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What a channel made of one delivery attempt."""

    id: str
    result: str  # delivered | retry | failed | dead
    error: str | None = None
    retry_at: float | None = None


def notification_of(row: Sequence[Any]) -> Notification:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["notification_id"] = values.pop("id")
    values["items"] = json.loads(values["items"]) if values["items"] else []
    return Notification.model_validate(values)


class Outbox:
    def __init__(self, db: PushDatabase) -> None:
        self.db = db

    # -- deciding -------------------------------------------------------------------------

    @staticmethod
    def add(db: Connection, rows: Iterable[NewNotification]) -> int:
        """Insert inside the caller's transaction; rows whose dedupe key exists are dropped.
        Returns how many were new."""
        return db.executemany(
            "INSERT INTO push_notifications (id, dedupe_key, user_id, item_id, items, type, channel, "
            "title, body, reason, p, campaign_id, trigger_id, status, suppressed_reason, created_at, due_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(r.id, r.dedupe_key, r.user_id, r.item_id, dumps(r.items) if r.items else None, r.type, r.channel,
              r.title, r.body, r.reason, float(r.p), r.campaign_id, r.trigger_id, r.status, r.suppressed_reason,
              r.created_at, r.due_at, r.expires_at) for r in rows],
        ).rowcount

    def history(self, user_ids: Sequence[str], since: float) -> dict[str, list[Past]]:
        """Each user's notifications due since `since` (any status), for the policy."""
        found: dict[str, list[Past]] = defaultdict(list)
        unique = list(dict.fromkeys(user_ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            rows = self.db.query(
                "SELECT user_id, due_at, type, item_id, status, delivered_at, opened_at, clicked_at, dismissed_at "
                f"FROM push_notifications WHERE user_id IN ({','.join('?' * len(chunk))}) AND due_at >= ? "
                "AND status != 'suppressed'", (*chunk, since))
            for row in rows:
                found[row[0]].append(Past(*row[1:]))
        return found

    def hour_count(self, hour: int) -> int:
        """Active notifications due within UTC hour `hour` (epoch hours): the global budget."""
        return int(self.db.query(
            f"SELECT count(*) FROM push_notifications WHERE status IN {_ACTIVE_SQL} AND due_at >= ? AND due_at < ?",
            (hour * 3600.0, (hour + 1) * 3600.0))[0][0])

    def exists(self, dedupe_keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(dedupe_keys), 500):
            chunk = list(dedupe_keys[start:start + 500])
            found.update(row[0] for row in self.db.query(
                f"SELECT dedupe_key FROM push_notifications WHERE dedupe_key IN ({','.join('?' * len(chunk))})",
                chunk))
        return found

    # -- delivering -----------------------------------------------------------------------

    def claim(self, now: float, worker: str, limit: int, lease_s: float) -> list[Notification]:
        """Due notifications for this worker to send, marked `sending` with a lease (committed
        before the first byte goes out). Scheduled rows past their expiry become `expired`.
        Not exclusive: on PostgreSQL workers lock the rows they take and pass others' rows."""
        with self.db.transaction(exclusive=False) as db:
            # Rows another worker holds are passed here too: two claims never wait on each other.
            db.execute("UPDATE push_notifications SET status = 'expired', suppressed_reason = 'not_sent_in_time' "
                       "WHERE seq IN (SELECT seq FROM push_notifications WHERE status = 'scheduled' AND due_at <= ? "
                       f"AND expires_at < ?{self.db.skip_locked})", (now, now))
            seqs = [row[0] for row in db.execute(
                "SELECT seq FROM push_notifications WHERE status = 'scheduled' AND due_at <= ? "
                f"ORDER BY due_at LIMIT ?{self.db.skip_locked}", (now, limit))]
            if not seqs:
                return []
            rows = db.execute(
                f"UPDATE push_notifications SET status = 'sending', lease_until = ?, worker = ?, "
                f"attempts = attempts + 1 WHERE seq IN ({','.join('?' * len(seqs))}) RETURNING {_SELECT}",
                (now + lease_s, worker, *seqs)).fetchall()
        return sorted((notification_of(row) for row in rows), key=lambda n: n.due_at)

    def recover(self, now: float) -> int:
        """Rows whose sender died (lease over) are due again."""
        with self.db.transaction(exclusive=False) as db:
            return db.execute("UPDATE push_notifications SET status = 'scheduled', lease_until = NULL, "
                              "worker = NULL WHERE status = 'sending' AND lease_until < ?", (now,)).rowcount

    def finish(self, outcomes: Sequence[Outcome], now: float, worker: str) -> None:
        """Record a batch of outcomes in one transaction. A delivery is recorded whoever holds
        the row now; the other outcomes only by the worker that still holds it."""
        with self.db.transaction() as db:
            seq = int(meta_in(db, "sent_seq", "0"))
            for outcome in outcomes:
                if outcome.result == "delivered":
                    seq += 1
                    db.execute("UPDATE push_notifications SET status = 'delivered', delivered_at = ?, sent_seq = ?, "
                               "lease_until = NULL, last_error = NULL WHERE id = ? AND status = 'sending'",
                               (now, seq, outcome.id))
                elif outcome.result == "retry":
                    db.execute("UPDATE push_notifications SET status = 'scheduled', due_at = ?, last_error = ?, "
                               "lease_until = NULL WHERE id = ? AND status = 'sending' AND worker = ?",
                               (outcome.retry_at or now, outcome.error, outcome.id, worker))
                else:  # failed | dead
                    db.execute("UPDATE push_notifications SET status = ?, last_error = ?, lease_until = NULL "
                               "WHERE id = ? AND status = 'sending' AND worker = ?",
                               (outcome.result, outcome.error, outcome.id, worker))
            set_meta(db, "sent_seq", str(seq))

    def next_due(self) -> float | None:
        rows = self.db.query("SELECT min(due_at) FROM push_notifications WHERE status = 'scheduled'")
        return rows[0][0]

    def set_body(self, notification_id: str, body: str) -> bool:
        """Replace the text of a notification not sent yet (the language model's copy)."""
        with self.db.transaction() as db:
            return db.execute("UPDATE push_notifications SET body = ? WHERE id = ? AND status = 'scheduled'",
                              (body, notification_id)).rowcount > 0

    # -- reading --------------------------------------------------------------------------

    def get(self, notification_id: str) -> Notification | None:
        rows = self.db.query(f"SELECT {_SELECT} FROM push_notifications WHERE id = ?", (notification_id,))
        return notification_of(rows[0]) if rows else None

    def for_user(self, user_id: str, status: str | None, limit: int) -> list[Notification]:
        """Newest first; `status` None means every status."""
        if status is None:
            rows = self.db.query(f"SELECT {_SELECT} FROM push_notifications WHERE user_id = ? "
                                 "ORDER BY due_at DESC, seq DESC LIMIT ?", (user_id, limit))
        else:
            rows = self.db.query(f"SELECT {_SELECT} FROM push_notifications WHERE user_id = ? AND status = ? "
                                 "ORDER BY due_at DESC, seq DESC LIMIT ?", (user_id, status, limit))
        return [notification_of(row) for row in rows]

    def latest(self, statuses: Sequence[str], limit: int) -> list[Notification]:
        """The latest notifications in any of `statuses`, newest first (e.g. the failures)."""
        rows = self.db.query(f"SELECT {_SELECT} FROM push_notifications WHERE status IN "
                             f"({','.join('?' * len(statuses))}) ORDER BY due_at DESC, seq DESC LIMIT ?",
                             (*statuses, limit))
        return [notification_of(row) for row in rows]

    def sent_after(self, seq: int, limit: int = 1000) -> list[tuple[int, Notification]]:
        """Deliveries after position `seq`, in the order they were recorded (SSE tails this)."""
        rows = self.db.query(f"SELECT sent_seq, {_SELECT} FROM push_notifications WHERE sent_seq > ? "
                             "ORDER BY sent_seq LIMIT ?", (seq, limit))
        return [(row[0], notification_of(row[1:])) for row in rows]

    def last_sent(self) -> int:
        return int(self.db.meta("sent_seq", "0") or 0)

    def record_feedback(self, notification_id: str, action: str, now: float) -> tuple[Notification, bool] | None:
        """Stamp opened/clicked/dismissed (the first time only); None for an unknown id.
        Returns the notification and whether this action is new."""
        column = {"opened": "opened_at", "clicked": "clicked_at", "dismissed": "dismissed_at"}[action]
        with self.db.transaction() as db:
            changed = db.execute(f"UPDATE push_notifications SET {column} = ? WHERE id = ? AND {column} IS NULL",
                                 (now, notification_id)).rowcount
            if action == "clicked":  # a click implies the notification was opened
                db.execute("UPDATE push_notifications SET opened_at = ? WHERE id = ? AND opened_at IS NULL",
                           (now, notification_id))
            rows = db.execute(f"SELECT {_SELECT} FROM push_notifications WHERE id = ?", (notification_id,)).fetchall()
        if not rows:
            return None
        return notification_of(rows[0]), bool(changed)

    def forget(self, user_id: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM push_notifications WHERE user_id = ?", (user_id,))

    # -- counting -------------------------------------------------------------------------

    def counts(self, campaign_id: str | None = None) -> dict[str, Any]:
        """By status, by suppression reason, by type and channel; opens and clicks."""
        where, parameters = ("WHERE campaign_id = ?", (campaign_id,)) if campaign_id else ("", ())
        by_status: dict[str, int] = {}
        suppressed: dict[str, int] = {}
        by_type: dict[str, int] = {}
        by_channel: dict[str, int] = {}
        rows = self.db.query(
            "SELECT status, coalesce(suppressed_reason, ''), type, coalesce(channel, ''), count(*), "
            f"count(opened_at), count(clicked_at), count(dismissed_at) FROM push_notifications {where} "
            "GROUP BY 1, 2, 3, 4", parameters)
        opened = clicked = dismissed = 0
        for status, reason, kind, channel, count, opens, clicks, dismissals in rows:
            by_status[status] = by_status.get(status, 0) + count
            if status in ("suppressed", "expired"):
                key = reason or status
                suppressed[key] = suppressed.get(key, 0) + count
            by_type[kind] = by_type.get(kind, 0) + count
            if channel and status not in ("suppressed", "expired"):
                by_channel[channel] = by_channel.get(channel, 0) + count
            opened, clicked, dismissed = opened + opens, clicked + clicks, dismissed + dismissals
        delivered = by_status.get(Status.delivered, 0)
        return {"by_status": by_status, "suppressed": suppressed, "by_type": by_type, "by_channel": by_channel,
                "opened": opened, "clicked": clicked, "dismissed": dismissed,
                "open_rate": round(opened / delivered, 4) if delivered else None,
                "click_rate": round(clicked / delivered, 4) if delivered else None}

    def delivery_latency(self, last: int = 5000) -> dict[str, float | None]:
        """Seconds from due to delivered over the latest deliveries: p50, p99, mean."""
        rows = self.db.query("SELECT delivered_at - due_at FROM push_notifications WHERE sent_seq IS NOT NULL "
                             "ORDER BY sent_seq DESC LIMIT ?", (last,))
        if not rows:
            return {"p50_s": None, "p99_s": None, "mean_s": None, "n": 0}
        values = np.maximum(np.array([r[0] for r in rows], dtype=np.float64), 0.0)
        return {"p50_s": round(float(np.percentile(values, 50)), 4), "p99_s": round(float(np.percentile(values, 99)), 4),
                "mean_s": round(float(values.mean()), 4), "n": len(values)}
