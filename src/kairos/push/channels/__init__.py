"""Delivery channels, one file each, all one protocol (`base.Channel`)."""

from kairos.push.channels.base import Channel
from kairos.push.channels.email import EmailChannel
from kairos.push.channels.inbox import InboxChannel
from kairos.push.channels.webhook import WebhookChannel

__all__ = ["Channel", "EmailChannel", "InboxChannel", "WebhookChannel"]
