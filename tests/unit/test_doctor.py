"""doctor's parsers: restart commands in hook scripts, Postfix protocol lists."""

from __future__ import annotations

from certbot_postfix_tls._internal import diagnose


def test_restart_commands_in_hooks() -> None:
    script = ("#!/bin/sh\n# systemctl restart postfix (a comment)\n"
              "systemctl reload postfix && /usr/bin/systemctl --quiet restart dovecot.service\n"
              "service postfix restart; /etc/init.d/dovecot stop\n"
              "postfix -c /etc/postfix-out stop || true\nFOO=1 sudo systemctl restart nginx\n")
    assert [(command, sorted(daemons)) for command, daemons in
            diagnose.restart_commands(script)] == [
        ("/usr/bin/systemctl --quiet restart dovecot.service", ["dovecot"]),
        ("service postfix restart", ["postfix"]),
        ("/etc/init.d/dovecot stop", ["dovecot"]),
        ("postfix -c /etc/postfix-out stop", ["postfix"]),
    ]


def test_postfix_protocol_lists() -> None:
    enabled = diagnose.postfix_protocols
    assert enabled(">=TLSv1.2") == {"TLSv1.2", "TLSv1.3"}
    assert enabled("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1") == {"TLSv1.2", "TLSv1.3"}
    assert enabled("!SSLv2:!SSLv3:!TLSv1.2:!TLSv1.3") == {"TLSv1", "TLSv1.1"}
    assert enabled("TLSv1") == {"TLSv1"}
    assert enabled(">=TLSv1 <=TLSv1.1") == {"TLSv1", "TLSv1.1"}
    assert enabled("") == set(diagnose._PROTOCOL_ORDER)
