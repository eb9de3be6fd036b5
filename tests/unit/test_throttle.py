"""Postfix's master throttle, from its own log lines: when it ends, if it has not."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from certbot_postfix_tls._internal.daemons.postfix import throttle

NOW = datetime(2026, 3, 1, 10, 0, 30, tzinfo=timezone.utc)
LINES = (
    "2026-03-01T10:00:10.123456+00:00 mail postfix/master[41]: warning: process "
    "/usr/lib/postfix/sbin/smtpd pid 77 exit status 1\n"
    "2026-03-01T10:00:10.123999+00:00 mail postfix/master[41]: warning: "
    "/usr/lib/postfix/sbin/smtpd: bad command startup -- throttling\n"
)


def test_a_throttle_in_force_ends_after_service_throttle_time() -> None:
    assert throttle.throttled_until(LINES, NOW, 60) == datetime(
        2026, 3, 1, 10, 1, 10, 123999, tzinfo=timezone.utc)


def test_a_throttle_that_ended_or_none_logged() -> None:
    assert throttle.throttled_until(LINES, NOW + timedelta(seconds=61), 60) is None
    assert throttle.throttled_until(LINES.splitlines()[0], NOW, 60) is None
    assert throttle.throttled_until("", NOW, 60) is None


def test_postfix_time_values() -> None:
    assert throttle.seconds("60s") == 60
    assert throttle.seconds("2m") == 120
    assert throttle.seconds("45") == 45
    assert throttle.seconds("") == 60 and throttle.seconds("x") == 60
