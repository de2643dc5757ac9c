"""Limits that keep one caller from taking the service from the others (docs/security.md)."""

from kairos.api.limits.body import BodySizeLimit
from kairos.api.limits.buckets import Buckets, TokenBuckets, buckets_for
from kairos.api.limits.requests import RequestRateLimit
from kairos.api.limits.url import UrlLengthLimit
from kairos.api.limits.user_events import UserEventLimit, UserEventsLimited

__all__ = ["BodySizeLimit", "Buckets", "RequestRateLimit", "TokenBuckets", "UrlLengthLimit", "UserEventLimit",
           "UserEventsLimited", "buckets_for"]
