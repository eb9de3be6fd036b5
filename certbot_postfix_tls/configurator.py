"""The ``postfix-tls`` certbot installer: orchestration of the ABC methods only.

Reading and writing Postfix configuration lives in ``postfix``; certificate
material in ``certs``; what was deployed in ``state``; handshake checks in
``verify``. Every change goes through certbot's reverter (SPEC section 8).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

from certbot import errors, interfaces, util
from certbot.display import util as display_util
from certbot.plugins import common

from certbot_postfix_tls import certs, permissions, postfix, verify
from certbot_postfix_tls.state import DeployedLineage, State

logger = logging.getLogger(__name__)


def yes_no(value: str) -> bool:
    """argparse type for yes/no options."""
    lowered = value.strip().lower()
    if lowered in ("yes", "y", "true", "on", "1"):
        return True
    if lowered in ("no", "n", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, not {value!r}")


yes_no.__name__ = "yes/no"  # argparse names the type in its error message


@dataclass
class _Staged:
    lineage: certs.Lineage
    material: certs.Material
    plan: postfix.TLSPlan
    applied: bool = False
    permission_changes: tuple[str, ...] = ()


class PostfixTLSConfigurator(common.Installer, interfaces.RenewDeployer):
    """Deploys certbot certificates into Postfix, reloads it and verifies the result."""

    description = "Postfix TLS: deploy to main.cf/master.cf, reload (never restart), verify"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        add("postfix-dir", default=None, metavar="DIR",
            help="Postfix configuration directory of the instance to configure "
                 "(default: Postfix's own config_directory).")
        add("dovecot-config", default="/etc/dovecot/dovecot.conf", metavar="FILE",
            help="Dovecot's main configuration file.")
        add("services", default="auto", metavar="LIST",
            help="Comma list of services to configure: postfix,dovecot (default: every "
                 "one installed).")
        add("submission", default=True, type=yes_no, metavar="yes/no",
            help="Configure port 587 (submission) with mandatory TLS (default: yes).")
        add("smtps", default=False, type=yes_no, metavar="yes/no",
            help="Configure port 465 (submissions, implicit TLS) (default: no).")
        add("sasl", default="auto", choices=("auto", "dovecot", "none"),
            help="SASL backend for submission: keep an existing one, else Dovecot's when "
                 "present (default: auto).")
        add("key-group", default="ssl-cert", metavar="NAME",
            help="Group given read access to the private key (default: ssl-cert).")
        add("default", action="store_true", default=False,
            help="Make this lineage the default certificate (clients without SNI).")
        add("verify", default=True, type=yes_no, metavar="yes/no",
            help="Check by handshake after every deploy/reload that the new certificate "
                 "is served (default: yes).")
        add("verify-address", default="127.0.0.1", metavar="ADDR",
            help="Where the check connects when a service listens on all addresses.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._postfix: Optional[postfix.Postfix] = None
        self._staged: Optional[_Staged] = None

    # -- helpers -------------------------------------------------------------

    @property
    def instance(self) -> postfix.Postfix:
        if self._postfix is None:
            raise errors.Error("The postfix-tls installer was used before prepare().")
        return self._postfix

    def _options(self) -> postfix.Options:
        return postfix.Options(
            submission=bool(self.conf("submission")),
            smtps=bool(self.conf("smtps")),
            sasl=str(self.conf("sasl")),
        )

    # -- certbot.interfaces.Plugin -------------------------------------------

    def prepare(self) -> None:
        """Postfix present, its configuration readable and sane, version known, lock taken."""
        self._postfix = postfix.Postfix(self.conf("postfix-dir"))
        config = self._postfix.read()
        self.config_test()
        if config.version < (2, 11):
            raise errors.NotSupportedError(
                f"Postfix {config.main.get('mail_version')} is too old: "
                "smtpd_tls_security_level needs Postfix 2.11 or newer."
            )
        util.lock_dir_until_exit(self._postfix.config_dir)

    def more_info(self) -> str:
        where = self._postfix.config_dir if self._postfix else "Postfix's configuration directory"
        return (
            f"Deploys the certificate to Postfix in {where} (main.cf through postconf, "
            "submission on 587 with mandatory TLS), reloads with postfix reload and checks "
            "by a real handshake that the new certificate is served."
        )

    # -- certbot.interfaces.Installer ----------------------------------------

    def get_all_names(self) -> Iterable[str]:
        return sorted(self.instance.all_names(self.instance.read()))

    def deploy_cert(
        self,
        domain: str,
        cert_path: str,
        key_path: str,
        chain_path: Optional[str] = None,
        fullchain_path: Optional[str] = None,
    ) -> None:
        """Stage the changes for this certificate; save() writes them.

        certbot calls this once per domain of the lineage: a second call for the
        same lineage is a no-op.
        """
        lineage = certs.Lineage.from_paths(domain, key_path, fullchain_path,
                                           self.config.config_dir)
        if self._staged is not None and self._staged.lineage == lineage:
            return
        material = certs.load_material(lineage)  # mismatch/missing: refuse before any change
        files = postfix.CertificateFiles(
            chain_file=lineage.chain_file, fullchain=lineage.fullchain_path, key=lineage.key_path
        )
        plan = postfix.plan_tls(self.instance.read(), files, self._options())
        self._staged = _Staged(lineage, material, plan)

    def enhance(
        self, domain: str, enhancement: str, options: Optional[list[str] | str] = None
    ) -> None:
        raise errors.PluginError(
            f"The postfix-tls installer has no {enhancement} enhancement: "
            "HTTP redirects, HSTS and OCSP stapling do not apply to mail."
        )

    def supported_enhancements(self) -> list[str]:
        return []

    def save(self, title: Optional[str] = None, temporary: bool = False) -> None:
        """Write staged changes under a reverter checkpoint; finalize it when titled."""
        staged = self._staged
        if staged is not None and not staged.applied:
            self._apply(staged, temporary)
        if title and not temporary:
            self.finalize_checkpoint(title)

    def _apply(self, staged: _Staged, temporary: bool) -> None:
        state_path = State.path(self.config.config_dir)
        touched = [self.instance.main_cf, self.instance.master_cf, staged.lineage.chain_file,
                   state_path]
        existing = {path for path in touched if os.path.exists(path)}
        self.add_to_checkpoint(existing, f"postfix-tls: deploy {staged.lineage.name}", temporary)
        created = [path for path in touched if path not in existing]
        if created:
            self.reverter.register_file_creation(temporary, *created)
        try:
            staged.permission_changes = tuple(self._secure_key(staged.lineage))
            certs.write_atomic(staged.lineage.chain_file, staged.material.combined(), 0o600)
            self.instance.apply(staged.plan)
            self._record(staged)
            self.instance.check()
        except errors.Error:
            self.recovery_routine()
            self._staged = None
            raise
        staged.applied = True
        self._report(staged)

    def _secure_key(self, lineage: certs.Lineage) -> list[str]:
        """Key group exists; key 0640 root:group at most, directories traversable by it."""
        group = str(self.conf("key-group"))
        _, created = permissions.ensure_group(group)
        changes = [f"created the system group {group}"] if created else []
        return changes + permissions.secure_lineage(lineage, group)

    def _record(self, staged: _Staged) -> None:
        state = State.load(self.config.config_dir)
        state.postfix_dir = self.instance.config_dir
        state.verify = bool(self.conf("verify"))
        state.verify_address = str(self.conf("verify-address"))
        lineage = staged.lineage
        state.lineages[lineage.name] = DeployedLineage(
            name=lineage.name,
            key_path=lineage.key_path,
            fullchain_path=lineage.fullchain_path,
            chain_file=lineage.chain_file,
            names=staged.material.names,
            renewable=lineage.in_live,
            key_group=str(self.conf("key-group")),
        )
        state.default = lineage.name
        state.save(self.config.config_dir)

    def _report(self, staged: _Staged) -> None:
        plan = staged.plan
        lines = [f"postfix-tls: deployed {staged.lineage.name} to Postfix in "
                 f"{self.instance.config_dir}"]
        lines += [f"  main.cf: {k} = {v}" for k, v in plan.main.items()]
        lines += [f"  master.cf: {p.service} -o {p.param}={p.value}" for p in plan.service_params]
        lines += [f"  key permissions: {change}" for change in staged.permission_changes]
        lines += [f"  note: {note}" for note in plan.notes]
        display_util.notify("\n".join(lines))
        for warning in plan.warnings:
            logger.info("postfix-tls: %s", warning)
            display_util.notify(f"WARNING: {warning}")

    def rollback_checkpoints(self, rollback: int = 1) -> None:
        try:
            self.reverter.rollback_checkpoints(rollback)
        except errors.ReverterError as exc:
            raise errors.PluginError(
                f"Rolling back the Postfix configuration failed: {exc}"
            ) from exc

    def config_test(self) -> None:
        self.instance.check()

    def restart(self) -> None:
        """Reload Postfix (never restart it) and verify what it serves.

        A stopped Postfix keeps its new configuration for its next start; it is
        not started here.
        """
        if not self.instance.running():
            message = (
                f"Postfix ({self.instance.config_dir}) is not running: its new configuration "
                "takes effect when you start it; nothing was reloaded."
            )
            logger.warning(message)
            display_util.notify(f"WARNING: {message}")
            return
        self.instance.check()
        self.instance.reload()
        state = State.load(self.config.config_dir)
        if state.verify and state.default in state.lineages:
            self._verify(state)

    def _verify(self, state: State) -> None:
        lineage = state.lineages[str(state.default)]
        expected = verify.ExpectedCert.from_fullchain(lineage.fullchain_path)
        config = self.instance.read()
        sni = lineage.names[0] if lineage.names else None
        failures = []
        for endpoint in postfix.endpoints(config, state.verify_address):
            result = verify.check_endpoint(endpoint, expected, sni)
            if result.status == "CRITICAL":
                failures.append(result.message)
            elif result.status == "WARNING":
                display_util.notify(f"WARNING: {result.message}")
        if failures:
            raise errors.MisconfigurationError(
                "Verification after postfix reload failed, so the change is rolled back: "
                + "; ".join(failures)
            )

    # -- certbot.interfaces.RenewDeployer --------------------------------------

    def renew_deploy(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        """Rebuild the combined key+chain file of a renewed lineage we deployed."""
        state = State.load(self.config.config_dir)
        deployed = state.lineages.get(lineage.lineagename)
        if deployed is None:
            return
        target = certs.Lineage.from_live_dir(
            os.path.dirname(lineage.fullchain_path), self.config.config_dir
        )
        permissions.secure_lineage(target, deployed.key_group)
        material = certs.load_material(target)
        certs.write_atomic(deployed.chain_file, material.combined(), 0o600)
