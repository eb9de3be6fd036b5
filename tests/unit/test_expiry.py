"""expiry.judge: one rule for verify, doctor, the metrics and the DANE hold, relative to
the certificate's lifetime; 90-day certificates keep the 14-day warning."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from certbot_postfix_tls._internal import expiry

START = datetime(2026, 6, 1, tzinfo=timezone.utc)
HOURS_160 = timedelta(hours=160)


@pytest.mark.parametrize(("lifetime", "left", "status"), [
    # 90 days: WARNING below 14 days left (as always), CRITICAL below 3.
    (timedelta(days=90), timedelta(days=30), "OK"),
    (timedelta(days=90), timedelta(days=14, minutes=1), "OK"),
    (timedelta(days=90), timedelta(days=13, hours=23), "WARNING"),
    (timedelta(days=90), timedelta(days=3, minutes=1), "WARNING"),
    (timedelta(days=90), timedelta(days=2, hours=23), "CRITICAL"),
    (timedelta(days=90), -timedelta(seconds=1), "CRITICAL"),
    # Longer lifetimes never warn earlier than 14 days.
    (timedelta(days=365), timedelta(days=20), "OK"),
    (timedelta(days=365), timedelta(days=13), "WARNING"),
    # 45 days: 7 and 1.5 days.
    (timedelta(days=45), timedelta(days=8), "OK"),
    (timedelta(days=45), timedelta(days=6), "WARNING"),
    (timedelta(days=45), timedelta(days=1), "CRITICAL"),
    # 160 hours: renewed at 80 hours left; WARNING below ~25, CRITICAL below ~5.
    (HOURS_160, HOURS_160, "OK"),
    (HOURS_160, timedelta(hours=80), "OK"),
    (HOURS_160, timedelta(hours=26), "OK"),
    (HOURS_160, timedelta(hours=24), "WARNING"),
    (HOURS_160, timedelta(hours=6), "WARNING"),
    (HOURS_160, timedelta(hours=5), "CRITICAL"),
])
def test_thresholds_follow_the_lifetime(lifetime: timedelta, left: timedelta,
                                        status: str) -> None:
    end = START + lifetime
    assert expiry.judge(end, START, end - left).status == status


def test_renewal_point_is_certbots() -> None:
    end = START + HOURS_160
    assert expiry.judge(end, START, START).renew_at == end - timedelta(hours=80)
    end = START + timedelta(days=90)
    judged = expiry.judge(end, START, START)
    assert judged.renew_at == end - timedelta(days=30)
    assert judged.warn_at == end - timedelta(days=14)
    assert judged.critical_at == end - timedelta(days=3)
    # The warning comes after the renewal point: certbot had its chance.
    for lifetime in (HOURS_160, timedelta(days=6), timedelta(days=45), timedelta(days=90)):
        judged = expiry.judge(START + lifetime, START, START)
        assert judged.renew_at < judged.warn_at < judged.critical_at < START + lifetime


def test_unknown_start_assumes_90_days() -> None:
    end = START + HOURS_160
    assert expiry.judge(end, None, START).status == "WARNING"
    assert expiry.judge(end, None, end - timedelta(days=2)).status == "CRITICAL"


def test_reasons_are_sentences_parts() -> None:
    end = START + HOURS_160
    assert expiry.judge(end, START, end + timedelta(hours=3)).reason() == "expired 3 hour(s) ago"
    assert expiry.judge(end, START, end - timedelta(hours=4)).reason() == (
        "expires in 4 hour(s), less than 5 hour(s) of its 6 day(s) lifetime")
    assert expiry.duration(timedelta(days=5, hours=3)) == "5 day(s)"
    assert expiry.duration(timedelta(hours=47)) == "47 hour(s)"
