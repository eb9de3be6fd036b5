"""The Postfix daemon: one instance addressed through ``postconf -c DIR``; its check,
reload and whether it runs, and its plan (``policy``) rendered and applied through
postconf (``-e`` for main.cf, ``-M``/``-P`` for master.cf; never text edits)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import ClassVar, Optional

from certbot import errors

from certbot_postfix_tls._internal import constants, process, sni, verify
from certbot_postfix_tls._internal.daemons.base import DaemonPlan, PlanRequest, Preview
from certbot_postfix_tls._internal.daemons.postfix import policy, throttle
from certbot_postfix_tls._internal.daemons.postfix.config import (
    ADVICE,
    EXPANDED_PARAMS,
    LEGACY_CERT_PARAMS,
    MAIN_PARAMS,
    NAME,
    PostfixConfig,
    parse_master,
    parse_postconf,
)
from certbot_postfix_tls._internal.daemons.postfix.listeners import (
    endpoints,
    unchecked_endpoints,
)
from certbot_postfix_tls._internal.daemons.postfix.policy import CertificateFiles, TLSPlan
from certbot_postfix_tls._internal.state import State
from certbot_postfix_tls._internal.tls_client import Advice, Endpoint

logger = logging.getLogger(__name__)



def _read_params() -> list[str]:
    """What ``read`` asks postconf for: the plan's own parameters and the policy's."""
    return list(dict.fromkeys([*MAIN_PARAMS, *(s.name for s in policy.MAIN_POLICY),
                               *(s.name for s in policy.SUBMISSION_HARDENING)]))


class Postfix:
    """One Postfix instance, addressed through ``postconf -c DIR``."""

    name: ClassVar[str] = NAME
    advice: ClassVar[Advice] = ADVICE
    cert_settings: ClassVar[tuple[str, ...]] = (
        "smtpd_tls_chain_files", "tls_server_sni_maps", *LEGACY_CERT_PARAMS)
    serves_derived: ClassVar[bool] = True

    def __init__(self, config_dir: Optional[str] = None) -> None:
        if process.find_tool("postconf") is None or process.find_tool("postfix") is None:
            raise errors.NoInstallationError(
                "Postfix is not installed (postconf and postfix were not found): "
                "install the postfix package first."
            )
        if config_dir is None:
            config_dir = self._postconf_raw(["-h", "config_directory"], None).strip()
        self.config_dir = os.path.abspath(config_dir)
        if not os.path.isfile(self.main_cf):
            raise errors.NoInstallationError(
                f"{self.main_cf} does not exist: pass the Postfix configuration directory "
                "with --postfix-tls-postfix-dir."
            )

    @classmethod
    def configured(cls, state: State) -> bool:
        """Every state configures a Postfix instance (its default one without
        ``postfix_dir``)."""
        return True

    @classmethod
    def for_state(cls, state: State) -> Postfix:
        """The instance ``state`` configures."""
        return cls(state.postfix_dir)

    @property
    def label(self) -> str:
        return f"Postfix ({self.config_dir})"

    @property
    def instance_key(self) -> str:
        """"" for Postfix's default instance; else a file-name-safe key made from this
        instance's config directory, one per directory: ``/`` becomes ``-``, any other
        byte but letters, digits and ``.`` becomes ``_`` and its hex value
        (``/etc/postfix-out``: ``etc-postfix_2dout``; ``/etc/postfix/out``:
        ``etc-postfix-out``)."""
        if self.config_dir == self._default_dir():
            return ""
        return "-".join(_escape(part) for part in self.config_dir.strip("/").split("/"))

    def state_key(self, config_dir: str) -> str:
        """The key of this instance's state under certbot's ``config_dir``: the
        ``instance_key``, or the key earlier versions made (every run of non-alphanumeric
        characters a ``-``, which gave ``/etc/postfix-out`` and ``/etc/postfix/out`` one
        state) while a state recorded for this very directory is still there."""
        key = self.instance_key
        if not key:
            return key
        legacy = re.sub(r"[^A-Za-z0-9._-]+", "-", self.config_dir.strip("/"))
        recorded = _recorded_dir(config_dir, key)
        if recorded is None and legacy != key and _recorded_dir(config_dir, legacy) == (
                self.config_dir):
            return legacy
        if recorded not in (None, "", self.config_dir):
            raise errors.PluginError(
                f"The plugin state {State.path(config_dir, key)} records Postfix {recorded}, "
                f"not {self.config_dir} (an earlier version gave both one key): undeploy "
                f"{recorded}'s lineages (certbot-postfix-tls undeploy --postfix-dir "
                f"{recorded}) and install them again, then deploy to {self.config_dir}."
            )
        return key

    def _default_dir(self) -> str:
        return os.path.abspath(self._postconf_raw(["-h", "config_directory"], None).strip())

    @property
    def main_cf(self) -> str:
        return os.path.join(self.config_dir, "main.cf")

    @property
    def master_cf(self) -> str:
        return os.path.join(self.config_dir, "master.cf")

    @staticmethod
    def _postconf_raw(args: list[str], config_dir: Optional[str]) -> str:
        argv = ["postconf"] + (["-c", config_dir] if config_dir else []) + args
        proc = process.run(
            argv, what="postconf failed", check=False, error=errors.MisconfigurationError
        )
        # Only what Postfix itself refuses is an error: postconf exiting non-zero or
        # printing "fatal:" (e.g. a main.cf line without "="). Its "warning:" lines
        # (an unused parameter, an undefined $name in master.cf) are notes: Postfix
        # runs with them; warnings() returns them for the deploy's output.
        problems = [
            line for line in proc.stderr.splitlines() if "fatal:" in line or "warning:" in line
        ]
        if proc.returncode != 0 or any("fatal:" in p for p in problems):
            where = config_dir or "its default directory"
            raise errors.MisconfigurationError(
                f"postconf cannot read the Postfix configuration in {where}: "
                f"{process.last_line(proc.stderr) or 'exit ' + str(proc.returncode)}; fix it "
                "(postfix check) and run certbot again."
            )
        for problem in problems:
            logger.debug("postconf: %s", problem)
        return proc.stdout

    def postconf(self, *args: str) -> str:
        return self._postconf_raw(list(args), self.config_dir)

    def read(self, expand: Sequence[str] = ()) -> PostfixConfig:
        """Read main.cf values, explicit settings, master.cf and map types."""
        main = parse_postconf(self.postconf(*_read_params()))
        # postconf -c DIR reports the built-in config_directory (Postfix 3.10) or DIR
        # (3.7) when main.cf does not set it: this instance's directory is DIR.
        main["config_directory"] = self.config_dir
        return PostfixConfig(
            main=main,
            explicit=parse_postconf(self.postconf("-n")),
            services=parse_master(self.postconf("-M")),
            map_types=set(self.postconf("-m").split()),
            expanded=parse_postconf(self.postconf("-x", *EXPANDED_PARAMS, *expand)),
        )

    def warnings(self) -> list[str]:
        """What postconf warns about in main.cf/master.cf, one line each, without the
        ``postconf: warning:`` prefix (e.g. ``/etc/postfix/main.cf: unused parameter:
        policyd-spf_time_limit=3600``). Postfix runs with these: they are notes, not
        errors (what it refuses makes postconf or ``postfix check`` fail instead)."""
        proc = process.run(
            ["postconf", "-c", self.config_dir, "-n"], what="postconf failed", check=False
        )
        found: list[str] = []
        for line in proc.stderr.splitlines():
            if "warning:" in line:
                text = line.split("warning:", 1)[1].strip()
                if text not in found:
                    found.append(text)
        return found

    def check(self) -> None:
        """``postfix check``, and postconf's own verdict; raises MisconfigurationError
        with Postfix's message when either refuses the configuration. postconf
        warnings are not refusals (see warnings())."""
        proc = process.run(
            ["postfix", "-c", self.config_dir, "check"], what="postfix check", check=False,
            stderr_tty=True,
        )
        fatal = [line for line in (proc.stderr + proc.stdout).splitlines() if "fatal:" in line]
        if proc.returncode != 0 or fatal:
            reason = fatal[-1] if fatal else process.last_line(proc.stderr or proc.stdout)
            raise errors.MisconfigurationError(
                f"postfix check failed for {self.config_dir}: "
                f"{reason or 'exit ' + str(proc.returncode) + ', see the mail log'}"
            )
        self.postconf("-n")  # raises on a fatal main.cf/master.cf problem

    def running(self) -> Optional[bool]:
        """Is this instance's master alive? Read from its pid file, not ``postfix
        status``, which fails on a broken main.cf even while the master runs.
        None when this user cannot tell (the pid file is root's alone)."""
        queue = self.postconf("-h", "queue_directory").strip()
        try:
            pid = process.daemon_pid(os.path.join(queue, "pid", "master.pid"), "master")
        except PermissionError:
            return None
        return pid is not None

    def throttle(self) -> tuple[Optional[datetime], str]:
        """(when the master's newest throttle of a service ends, None when none is in
        force; the log file that says so)."""
        log = self.postconf("-xh", "maillog_file").strip() or constants.SYSLOG_MAIL
        hold = throttle.seconds(self.postconf("-h", "service_throttle_time").strip())
        ends = throttle.throttled_until(verify.read_log_tail(log), datetime.now(timezone.utc),
                                        hold)
        return ends, log

    def reload(self) -> None:
        """``postfix reload`` (never a restart)."""
        process.run(
            ["postfix", "-c", self.config_dir, "reload"],
            what=f"postfix reload failed for {self.config_dir}",
            error=errors.MisconfigurationError,
            stderr_tty=True,
        )

    def plan(self, request: PlanRequest) -> TLSPlan:
        """main.cf/master.cf for ``request``: the default certificate and the SNI table
        (plus the TLS policy on install), recorded in the state so that the last
        undeploy can put back what was there; with no lineage left, that restore."""
        config = request.mta_config  # read by the operation before rendering
        assert isinstance(config, PostfixConfig)
        state, served = request.state, request.served
        if request.removing:
            return policy.restore_plan(config, state)
        default = served.lineages[str(served.default)]
        files = CertificateFiles(
            # One key+chain file per key type: Postfix picks what the client supports.
            chain_file=", ".join(sni.chain_files(served, default.name)),
            fullchain=default.fullchain_path,
            key=default.key_path,
            sni_map=sni.merged_maps(
                config.main.get("tls_server_sni_maps", ""),
                f"{state.sni_map_type}:{sni.map_path(request.config_dir, state.instance)}",
            ) if state.sni_map_type else None,
        )
        if request.policy is not None:
            plan = policy.plan_tls(config, files, request.policy)
        else:
            plan = TLSPlan(main=policy.cert_settings(config, files))
        policy.record_applied(state, config, plan)
        return plan

    def files(self, plan: DaemonPlan) -> list[str]:
        """main.cf and master.cf."""
        return [self.main_cf, self.master_cf]

    def apply(self, plan: DaemonPlan) -> None:
        """Write the plan through postconf: master.cf's removals first (undeploy), main.cf
        in one ``-e``, ``-M`` for new services (complete entries), one ``-P``, then the
        main.cf settings to remove."""
        assert isinstance(plan, TLSPlan)
        for key in plan.services_remove:
            self.postconf("-MX", key)
        if plan.params_remove:
            self.postconf("-PX", *plan.params_remove)
        if plan.main:
            # postconf -e edits the lines of parameters main.cf sets in place, in one
            # run; it appends the others in its hash table's order, which Postfix >= 3.7
            # randomizes per run. So each new parameter gets a run of its own, in the
            # plan's order: the resulting main.cf is one `plan` can show byte for byte.
            present = set(parse_postconf(self.postconf("-n")))
            edits = [f"{k}={v}" for k, v in plan.main.items() if k in present]
            if edits:
                self.postconf("-e", *edits)
            for key, value in plan.main.items():
                if key not in present:
                    self.postconf("-e", f"{key}={value}")
        for service in plan.new_services:
            self.postconf("-M", f"{service.key}={service.line()}")
        if plan.service_params:
            self.postconf("-P", *(p.arg() for p in plan.service_params))
        if plan.main_remove:
            self.postconf("-X", *plan.main_remove)

    def preview(self, plan: DaemonPlan, state: State) -> Preview:
        """main.cf and master.cf as ``apply(plan)`` would write them: the same postconf
        runs on a private copy of the two files (``postconf -c COPY``), so the preview is
        byte for byte what the install writes; and the endpoints of that master.cf."""
        assert isinstance(plan, TLSPlan)
        with tempfile.TemporaryDirectory(prefix="postfix-tls-plan-") as copy:
            for path in (self.main_cf, self.master_cf):
                if os.path.exists(path):
                    shutil.copyfile(path, os.path.join(copy, os.path.basename(path)))
            shadow = Postfix(copy)
            if not plan.empty:
                shadow.apply(plan)
            files: dict[str, Optional[bytes]] = {}
            for path in (self.main_cf, self.master_cf):
                written = os.path.join(copy, os.path.basename(path))
                with open(written, "rb") as handle:
                    files[path] = handle.read()
            found = endpoints(shadow.read(), state.verify_address, state.verify_ports)
        # The preview speaks of this instance's files, not the copy's.
        return Preview(files, [dataclasses.replace(e, setting=e.setting.replace(
            copy, self.config_dir), log_file=e.log_file.replace(copy, self.config_dir))
            for e in found])

    def endpoints(self, state: State) -> list[Endpoint]:
        """The listeners a deploy verifies (``listeners.endpoints``)."""
        return endpoints(self.read(), state.verify_address, state.verify_ports)

    def unchecked(self, state: State) -> list[tuple[str, str]]:
        """The listeners verification skips, and why (``listeners.unchecked_endpoints``)."""
        return unchecked_endpoints(self.read(), state.verify_ports, state.verify_address)

    def all_names(self, config: PostfixConfig) -> set[str]:
        """Names this server answers for, from main.cf (for certbot's domain prompt)."""
        names: set[str] = set()
        for param in ("myhostname", "mydomain", "virtual_mailbox_domains",
                      "virtual_alias_domains", "relay_domains"):
            names.update(_literal_domains(config.value(param)))
        return names


def _recorded_dir(config_dir: str, key: str) -> Optional[str]:
    """The Postfix directory the state under ``key`` records; None without a state."""
    if not os.path.exists(State.path(config_dir, key)):
        return None
    recorded = State.load(config_dir, key).postfix_dir
    return os.path.abspath(recorded) if recorded else ""


def _escape(part: str) -> str:
    """A path component with every byte outside ``[A-Za-z0-9.]`` written ``_XX``."""
    return "".join(char if char.isascii() and (char.isalnum() or char == ".")
                   else "".join(f"_{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))
                   for char in part)


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def _literal_domains(value: str) -> Iterable[str]:
    """Domain names written out literally (not $variables, maps or files)."""
    for item in re.split(r"[\s,]+", value.strip()):
        item = item.lower().rstrip(".")
        if item and _DOMAIN.match(item):
            yield item
