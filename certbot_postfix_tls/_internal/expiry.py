"""When a certificate counts as expiring: judged against its own lifetime.

One rule for ``verify``, ``doctor``, the metrics and the DANE hold. certbot renews
when a third of the lifetime is left (half for certificates shorter than ten days),
so a 160-hour certificate is renewed with 80 hours left and a 90-day one with 30
days: a fixed "14 days left" would call every healthy short-lived certificate
expiring. Instead:

- WARNING once less than 14/90 of the lifetime is left (never more than 14 days):
  the renewal point passed long enough ago that certbot, which tries twice a day,
  should have renewed it (14 days of 90, 7 of 45, 25 hours of 160);
- CRITICAL once less than 3/90 is left (never more than 3 days), or expired:
  clients fail soon (3 days of 90, 1.5 of 45, 5 hours of 160).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

from certbot_postfix_tls._internal import constants
from certbot_postfix_tls._internal.findings import CRITICAL, OK, WARNING

__all__ = ["Expiry", "duration", "judge"]


@dataclass(frozen=True)
class Expiry:
    """The verdict on one certificate's remaining validity."""

    status: str  # OK, WARNING or CRITICAL
    not_after: datetime
    lifetime: timedelta
    left: timedelta  # negative once expired
    renew_at: datetime  # certbot's renewal point
    warn_at: datetime
    critical_at: datetime

    @property
    def expired(self) -> bool:
        return self.left < timedelta(0)

    @property
    def days_left(self) -> int:
        """Whole days left, rounded down (negative once expired)."""
        return int(self.left.total_seconds() // 86400)

    def reason(self) -> str:
        """Why the status: a phrase to append to a sentence naming the certificate."""
        if self.expired:
            return f"expired {duration(-self.left)} ago"
        life = duration(self.lifetime)
        if self.status == CRITICAL:
            return (f"expires in {duration(self.left)}, less than "
                    f"{duration(self.not_after - self.critical_at)} of its {life} lifetime")
        if self.status == WARNING:
            return (f"expires in {duration(self.left)}: certbot should have renewed it at "
                    f"{self.renew_at:%Y-%m-%d %H:%M} UTC (a {'half' if self._short else 'third'}"
                    f" of its {life} lifetime left)")
        return f"expires in {duration(self.left)}"

    @property
    def _short(self) -> bool:
        return self.lifetime < timedelta(days=constants.SHORT_LIFETIME_DAYS)


def duration(delta: timedelta) -> str:
    """A human length: hours below two days, days above."""
    seconds = max(0.0, delta.total_seconds())
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} hour(s)"
    return f"{int(seconds // 86400)} day(s)"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def judge(not_after: datetime, not_before: Optional[datetime] = None,
          now: Optional[datetime] = None) -> Expiry:
    """Judge a certificate valid from ``not_before`` to ``not_after`` at ``now``.

    Without ``not_before`` (a record written before it was kept) the lifetime is taken
    as 90 days: the fixed thresholds of old, which err towards warning early.
    """
    not_after = _aware(not_after)
    now = _aware(now) if now is not None else datetime.now(timezone.utc)
    if not_before is None:
        lifetime = timedelta(days=constants.DEFAULT_LIFETIME_DAYS)
    else:
        lifetime = max(not_after - _aware(not_before), timedelta(0))
    short = lifetime < timedelta(days=constants.SHORT_LIFETIME_DAYS)
    renew = lifetime * (constants.RENEW_SHARE_SHORT if short else constants.RENEW_SHARE)
    warn = min(lifetime * constants.WARN_SHARE, timedelta(days=constants.WARN_DAYS))
    critical = min(lifetime * constants.CRITICAL_SHARE,
                   timedelta(days=constants.CRITICAL_DAYS))
    left = not_after - now
    status = CRITICAL if left < critical else WARNING if left < warn else OK
    return Expiry(status, not_after, lifetime, left, not_after - renew, not_after - warn,
                  not_after - critical)
