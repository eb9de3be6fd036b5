"""The Dovecot daemon: its version, configuration check, reload, whether it runs,
and the plugin's file planned and applied through ``plan``."""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
from collections.abc import Sequence
from typing import ClassVar, Optional

from certbot import errors

from certbot_postfix_tls._internal import certs, constants, process
from certbot_postfix_tls._internal.daemons.base import DaemonPlan, PlanRequest, Preview
from certbot_postfix_tls._internal.daemons.dovecot import conftree
from certbot_postfix_tls._internal.daemons.dovecot.conftree import ConfigTree, read_config
from certbot_postfix_tls._internal.daemons.dovecot.doveconf import (
    ADVICE,
    DEFAULT_CONFIG,
    MIN_PROTOCOL,
    NAME,
    PREFER_SERVER,
    count_sessions,
    doveconf_problem,
    endpoints_from_doveconf,
    legacy_min_protocol,
    legacy_protocol_warning,
    parse_doveconf,
)
from certbot_postfix_tls._internal.daemons.dovecot.plan import (
    CERT_SETTINGS_23,
    CERT_SETTINGS_24,
    SESSIONS_CUT,
    SESSIONS_KEEP,
    SHUTDOWN_CLIENTS,
    CertFiles,
    DovecotPlan,
    plan_config,
    plugin_layout,
    removal_plan,
    sni_entries,
    sni_files,
    uses_24,
)
from certbot_postfix_tls._internal.state import State
from certbot_postfix_tls._internal.tls_client import Advice, Endpoint


class Dovecot:
    """One Dovecot instance, addressed by its dovecot.conf (``doveconf -c FILE``)."""

    name: ClassVar[str] = NAME
    advice: ClassVar[Advice] = ADVICE
    cert_settings: ClassVar[tuple[str, ...]] = (*CERT_SETTINGS_23, *CERT_SETTINGS_24)
    serves_derived: ClassVar[bool] = False  # it reads certbot's live/ files

    def __init__(
        self, config_file: str = DEFAULT_CONFIG, version: Optional[Sequence[int]] = None
    ) -> None:
        if process.find_tool("doveconf") is None:
            raise errors.NoInstallationError(
                "Dovecot is not installed (doveconf was not found): install dovecot-imapd "
                "or dovecot-pop3d, or leave dovecot out of --postfix-tls-services."
            )
        self.config_file = os.path.abspath(config_file)
        if not os.path.isfile(self.config_file):
            raise errors.NoInstallationError(
                f"{self.config_file} does not exist: pass Dovecot's configuration file with "
                "--postfix-tls-dovecot-config."
            )
        self.version: tuple[int, ...] = (
            tuple(version) if version is not None else self._detect_version()
        )
        try:
            main_text = conftree.read_text(self.config_file)
        except OSError as exc:
            raise errors.MisconfigurationError(
                f"Cannot read {self.config_file}: {exc.strerror}; run certbot as root."
            ) from exc
        self.plugin_file, self.include_from = plugin_layout(self.config_file, main_text)

    @classmethod
    def configured(cls, state: State) -> bool:
        """A state configures the Dovecot whose dovecot.conf it records."""
        return bool(state.dovecot_config)

    @classmethod
    def for_state(cls, state: State) -> Dovecot:
        """The Dovecot of ``state.dovecot_config``."""
        return cls(str(state.dovecot_config))

    @property
    def label(self) -> str:
        return f"Dovecot ({self.config_file})"

    def _detect_version(self) -> tuple[int, ...]:
        if process.find_tool("dovecot") is not None:
            proc = process.run(["dovecot", "--version"], what="dovecot --version", check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                return process.version_tuple(proc.stdout)
        # doveconf's header line: "# 2.3.19.1 (9b53102964): /etc/dovecot/dovecot.conf"
        proc = self._doveconf("-n", check=False)
        match = re.match(r"#\s*(\S+)", proc.stdout)
        if match:
            return process.version_tuple(match.group(1))
        raise errors.NoInstallationError(
            f"Cannot tell which Dovecot version reads {self.config_file} (dovecot --version "
            "and doveconf -n failed): check the Dovecot installation."
        )

    @property
    def uses_24_syntax(self) -> bool:
        """Dovecot 2.4 renamed the certificate settings (ssl_server_cert_file)."""
        return uses_24(self.version)

    def _doveconf(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = process.run(
            ["doveconf", "-c", self.config_file, *args],
            what=f"doveconf could not read {self.config_file}",
            check=False,
            error=errors.MisconfigurationError,
        )
        if check and proc.returncode != 0:
            raise errors.MisconfigurationError(
                f"Dovecot rejects its configuration {self.config_file}: "
                f"{doveconf_problem(proc.stderr, proc.stdout, proc.returncode)}; fix it "
                "(doveconf -n shows the problem) and run certbot again."
            )
        return proc

    def check_syntax(self) -> None:
        """Refuse a configuration that doveconf already rejects without reading cert files.

        For use before planning: a missing ``<file`` (Debian's snakeoil) is not an
        error here, since the plan is what replaces it.
        """
        self._doveconf("base_dir")

    def check(self) -> None:
        """The configuration check Dovecot's own start does, cert/key files included.

        ``doveconf -n`` exits 0 when an ``ssl_cert = <file`` is missing; ``-x``
        expands file values and fails like ``dovecot`` would, on 2.3 and 2.4. A
        setting name is given so that no key material is printed.
        """
        proc = self._doveconf("-x", "base_dir", check=False)
        if proc.returncode != 0:
            raise errors.MisconfigurationError(
                f"Dovecot's configuration check (doveconf -x) fails for {self.config_file}: "
                f"{doveconf_problem(proc.stderr, proc.stdout, proc.returncode)}; "
                "Dovecot would not start or reload with it."
            )

    def base_dir(self) -> str:
        """Dovecot's runtime directory (master.pid lives there)."""
        proc = self._doveconf("base_dir", check=False)
        values = parse_doveconf(proc.stdout).settings if proc.returncode == 0 else {}
        return values.get("base_dir") or constants.DOVECOT_BASE_DIR

    def master_pid(self) -> Optional[int]:
        """The pid of a live Dovecot master for this configuration, if any (raises
        PermissionError when this user cannot read its pid file)."""
        return process.daemon_pid(os.path.join(self.base_dir(), "master.pid"), "dovecot")

    def running(self) -> Optional[bool]:
        """Whether this Dovecot's master process runs; None when this user cannot tell."""
        try:
            return self.master_pid() is not None
        except PermissionError:
            return None

    def reload(self) -> None:
        """``doveadm reload`` (SIGHUP: listeners kept) after the full config check.

        Dovecot refuses an invalid new config on reload and only logs it, so the
        check runs first and raises instead.
        """
        self.check()
        process.run(
            ["doveadm", "-c", self.config_file, "reload"],
            what=f"doveadm reload failed for {self.config_file}",
            error=errors.MisconfigurationError,
        )

    def read(self) -> ConfigTree:
        """Every file Dovecot reads, plus the plugin's file and its include target."""
        extra = [self.plugin_file] + ([self.include_from] if self.include_from else [])
        return read_config(self.config_file, extra)

    def plan(self, request: PlanRequest) -> DovecotPlan:
        """The plugin's file for ``request`` (default certificate, ``local_name`` per
        other lineage, the SASL socket, the sessions mode); with no lineage left, its
        removal."""
        if request.removing:
            plan = removal_plan(self.read(), self.plugin_file, self.include_from)
        else:
            served = request.served
            plan = self.plan_files(
                sni_files(served, str(served.default)),
                sasl_listener=served.sasl_listener,
                sni=sni_entries(served),
                sessions=served.dovecot_sessions,
            )
        plan.notes = [f"dovecot: {note}" for note in plan.notes]
        if request.policy is not None and not request.removing:
            plan.warnings += self.protocol_warnings()
        return plan

    def protocol_warnings(self) -> list[str]:
        """The operator's ``ssl_min_protocol`` when it allows TLS older than 1.2: said,
        never changed (it may be there for an old client the operator still serves)."""
        value = self.settings(MIN_PROTOCOL).get(MIN_PROTOCOL, "")
        return [legacy_protocol_warning(self.config_file, value)] if legacy_min_protocol(
            value) else []

    def plan_files(
        self,
        cert: CertFiles,
        sasl_listener: Optional[str] = None,
        sni: Sequence[tuple[Sequence[str], CertFiles]] = (),
        sessions: str = SESSIONS_CUT,
    ) -> DovecotPlan:
        """What to write so that ``cert`` (and ``sni`` by name) is what Dovecot serves.

        ``sasl_listener`` is the absolute path of the auth socket Postfix connects to
        (``<queue_directory>/private/auth``); its directory and the postfix user and
        group must exist, or Dovecot would fail to start. ``sessions``: see plan_config.
        """
        if sasl_listener:
            directory = os.path.dirname(sasl_listener)
            if not os.path.isdir(directory):
                raise errors.MisconfigurationError(
                    f"Dovecot cannot create Postfix's SASL socket {sasl_listener}: "
                    f"{directory} does not exist; check Postfix's queue_directory."
                )
            try:
                pwd.getpwnam("postfix")
                grp.getgrnam("postfix")
            except KeyError as exc:
                raise errors.MisconfigurationError(
                    f"Dovecot's SASL socket {sasl_listener} needs the postfix user and group, "
                    "which do not exist: install Postfix first."
                ) from exc
        return plan_config(
            self.read(), self.version, self.plugin_file, self.include_from, cert,
            sasl_listener, sni, sessions,
        )

    def files(self, plan: DaemonPlan) -> list[str]:
        """The files the plan writes or removes."""
        assert isinstance(plan, DovecotPlan)
        return [*plan.writes, *plan.removes]

    def apply(self, plan: DaemonPlan) -> None:
        """Write the plan's files (new files 0644 like Debian's conf.d; modes kept) and
        remove those it removes."""
        assert isinstance(plan, DovecotPlan)
        for path, text in plan.writes.items():
            certs.write_atomic(path, conftree.encode_text(text), mode=None)  # mode and owner kept
        for path in plan.removes:
            if os.path.lexists(path):
                os.unlink(path)

    def preview(self, plan: DaemonPlan, state: State) -> Preview:
        """The files ``apply(plan)`` writes or removes, and the endpoints verified after
        it (the plugin's file sets certificates, never listeners: those in force)."""
        assert isinstance(plan, DovecotPlan)
        files: dict[str, Optional[bytes]] = {path: text.encode()
                                             for path, text in plan.writes.items()}
        files.update({path: None for path in plan.removes})
        return Preview(files, self.endpoints(state))

    def endpoints(self, state: State) -> list[Endpoint]:
        """Enabled IMAP/POP3 TLS endpoints, those on ``state.verify_ports`` when it
        names some."""
        return [e for e in self.effective_endpoints(state.verify_address)
                if not state.verify_ports or e.port in state.verify_ports]

    def unchecked(self, state: State) -> list[tuple[str, str]]:
        """None: every IMAP/POP3 TLS listener is checked (disabled and PROXY-protocol
        listeners are no TLS endpoints)."""
        return []

    def effective_endpoints(self, verify_address: str) -> list[Endpoint]:
        """Enabled IMAP/POP3 TLS endpoints of the effective configuration."""
        proc = self._doveconf("protocols", "listen", "ssl", "service/imap-login",
                              "service/pop3-login")
        # Asked apart and allowed to fail: 2.4 renamed it, and verify must not depend on it.
        order = self._doveconf(PREFER_SERVER[1] if self.uses_24_syntax else PREFER_SERVER[0],
                               check=False)
        extra = order.stdout if order.returncode == 0 else ""
        return endpoints_from_doveconf(proc.stdout + extra, verify_address)

    def settings(self, *names: str) -> dict[str, str]:
        """Top-level values in effect (``doveconf NAME...``, files not expanded), e.g.
        ``{"ssl_cert": "</etc/.../fullchain.pem"}``; read-only, for ``doctor``."""
        # 2.4's doveconf prints ssl_server_cert_file (set as such) empty and its value
        # in an `ssl_server { cert_file = ... }` block: read it there.
        block = self.uses_24_syntax and any(name in CERT_SETTINGS_24 for name in names)
        root = parse_doveconf(self._doveconf(*names, *(["ssl_server"] if block else [])).stdout)
        values = dict(root.settings)
        for header, section in root.children:
            if header != "ssl_server":
                continue
            for short, value in section.settings.items():
                name = f"ssl_server_{short}"
                if name in names and (value or not values.get(name)):
                    values[name] = value
        return values

    def session_mode(self) -> str:
        """``keep`` when the configuration on disk has ``shutdown_clients = no`` (what
        the next reload applies), else ``cut``."""
        value = self.settings(SHUTDOWN_CLIENTS).get(SHUTDOWN_CLIENTS, "yes")
        return SESSIONS_KEEP if value == "no" else SESSIONS_CUT

    def sessions(self) -> dict[str, int]:
        """Established (logged-in) sessions per protocol, ``{"imap": 3, "pop3": 1}``,
        from ``doveadm who -1`` (one line per connection; needs root)."""
        proc = process.run(
            ["doveadm", "-c", self.config_file, "-f", "tab", "who", "-1"],
            what=f"doveadm who failed for {self.config_file}",
            error=errors.MisconfigurationError,
        )
        return count_sessions(proc.stdout)

