"""Postfix's master throttles a service whose daemon failed to start ("bad command
startup -- throttling"): for service_throttle_time (60 s by default) it accepts no
connection on that port. A submission port whose smtpd died before an install (a
SASL backend that was missing) is still throttled right after the install's reload,
so verification waits it out, bounded, instead of rolling a good change back."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Optional

from certbot_postfix_tls._internal import verify

THROTTLE_LINE = "bad command startup -- throttling"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(value: str, default: int = 60) -> int:
    """A Postfix time value (``60s``, ``1m``, ``60``) in seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", value or "")
    if not match:
        return default
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def throttled_until(log_text: str, now: datetime, throttle_seconds: int) -> Optional[datetime]:
    """When the newest throttle the master logged ends, if it has not ended by ``now``."""
    newest: Optional[datetime] = None
    for line in log_text.splitlines():
        if THROTTLE_LINE not in line or "postfix" not in line:
            continue
        when = verify.log_time(line, now)
        if when is not None and (newest is None or when > newest):
            newest = when
    if newest is None:
        return None
    ends = newest + timedelta(seconds=throttle_seconds)
    return ends if ends > now else None
