"""The ``postfix-tls`` certbot installer: certbot's Installer ABC, orchestration only.

deploy_cert() records the lineage in a prospective state and has the pipeline
render it; save() has the pipeline write it under a reverter checkpoint;
restart() reloads and verifies. Every file the plugin changes is written by
``pipeline``, which renewal hooks, ``undeploy`` and rollback share.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

from certbot import errors, interfaces, util
from certbot.display import util as display_util
from certbot.plugins import common

from certbot_postfix_tls._internal import (
    certs,
    constants,
    daemons,
    hooks,
    pipeline,
    process,
    sni,
)
from certbot_postfix_tls._internal.daemons.dovecot import doveconf
from certbot_postfix_tls._internal.daemons.dovecot.ctl import Dovecot
from certbot_postfix_tls._internal.daemons.dovecot.plan import SESSION_MODES
from certbot_postfix_tls._internal.daemons.postfix import config as postfix_config
from certbot_postfix_tls._internal.daemons.postfix import listeners
from certbot_postfix_tls._internal.daemons.postfix import sasl as postfix_sasl
from certbot_postfix_tls._internal.daemons.postfix.config import PostfixConfig
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.daemons.postfix.policy import Options
from certbot_postfix_tls._internal.dane import lookup, records
from certbot_postfix_tls._internal.dane.update import Updater
from certbot_postfix_tls._internal.lock import plugin_lock
from certbot_postfix_tls._internal.ops import renewal
from certbot_postfix_tls._internal.ops.render import render
from certbot_postfix_tls._internal.state import DeployedLineage, State

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
class Staged:
    lineage: certs.Lineage
    site: pipeline.Site
    desired: pipeline.Desired
    applied: bool = False
    # Files the daemons read that the write changed (None: not written yet).
    changed: Optional[list[str]] = None


class PostfixTLSConfigurator(common.Installer, interfaces.RenewDeployer):
    """Deploys certbot certificates into Postfix, reloads it and verifies the result."""

    description = "Postfix TLS: deploy to main.cf/master.cf, reload (never restart), verify"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        add("postfix-dir", default=None, metavar="DIR",
            help="Postfix configuration directory of the instance to configure "
                 "(default: Postfix's own config_directory).")
        add("dovecot-config", default=None, metavar="FILE",
            help="Dovecot's main configuration file (default: the one Dovecot reads, as "
                 "doveconf -n names it: /etc/dovecot/dovecot.conf, or "
                 "/usr/local/etc/dovecot/dovecot.conf on FreeBSD).")
        add("services", default="auto", metavar="LIST",
            help="Comma list of services to configure: postfix,dovecot (default: every "
                 "one installed).")
        add("submission", default=True, type=yes_no, metavar="yes/no",
            help="Configure port 587 (submission) with mandatory TLS (default: yes).")
        add("smtps", default=False, type=yes_no, metavar="yes/no",
            help="Configure port 465 (submissions, implicit TLS) (default: no).")
        add("sasl", default="auto", choices=("auto", Dovecot.name, "none"),
            help="SASL backend for submission: keep an existing one, else Dovecot's when "
                 "present (default: auto).")
        add("key-group", default=constants.CLI_DEFAULTS["key_group"], metavar="NAME",
            help="Group given read access to the private key (default: %(default)s).")
        add("default", action="store_true", default=False,
            help="Make this lineage the default certificate (clients without SNI).")
        add("verify", default=True, type=yes_no, metavar="yes/no",
            help="Check by handshake after every deploy/reload that the new certificate "
                 "is served (default: yes).")
        add("verify-address", default=constants.CLI_DEFAULTS["verify_address"], metavar="ADDR",
            help="Where the check connects when a service listens on all addresses.")
        add("dane", default=None, choices=records.MODES,
            help="auto: never serve a renewed certificate that validated TLSA records "
                 "(_25._tcp.NAME) do not match; the previous one stays until the new record "
                 "is published and seen for twice its TTL. ignore: no TLSA checks for this "
                 "lineage. Default: what the last deploy recorded, else auto.")
        add("dane-resolver", default=None, metavar="ADDR",
            help="Validating resolver for the TLSA lookups (ADDR or ADDR@PORT; default: "
                 "what the last deploy recorded, else the system resolver).")
        add("dane-names", default=None, metavar="LIST",
            help="Comma list of more host names senders use to reach this certificate "
                 "(MX hosts, names behind a proxy), whose TLSA records a renewal must match "
                 "besides its own names, myhostname and the MX hosts of its domains that "
                 "point here (default: what the last deploy recorded, else none).")
        add("dane-update", default=None, metavar="FILE",
            help="certbot-dns-rfc2136 credentials file: publish a held renewal's TLSA "
                 "records by RFC 2136 dynamic update (TSIG), and remove the retired key's "
                 "twice their TTL after the activation (default: what the last deploy "
                 "recorded, else none: the records are printed).")
        add("verify-ports", default="auto", metavar="LIST",
            help="Comma list of the ports the check verifies (default: auto, every "
                 "public TLS port; loopback-only content-filter/proxy ports are skipped).")
        add("dovecot-sessions", default=None, choices=SESSION_MODES,
            help="What Dovecot's reload at every renewal does to established IMAP/POP3 "
                 "sessions: cut (Dovecot's default: every mail client reconnects) or keep "
                 "(puts shutdown_clients = no in the plugin's Dovecot file unless your "
                 "configuration sets shutdown_clients; then `dovecot stop` also leaves "
                 "sessions running). Default: what the last deploy recorded, else cut.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._postfix: Optional[Postfix] = None
        self._dovecot: Optional[Dovecot] = None
        self._staged: Optional[Staged] = None
        # Where deploy_cert's notes go: certbot's display; `plan` collects them.
        self.notify: Callable[[str], None] = display_util.notify
        # The plugin's lock from deploy_cert's first read of the state to the end of
        # save's write: a hook, `dane check` or `undeploy` in between would be overwritten.
        self._held = contextlib.ExitStack()

    # -- helpers -------------------------------------------------------------

    @property
    def instance(self) -> Postfix:
        if self._postfix is None:
            raise errors.Error("The postfix-tls installer was used before prepare().")
        return self._postfix

    def _options(self, dovecot_sasl: bool, config: PostfixConfig) -> Options:
        return Options(
            submission=bool(self.conf("submission")),
            smtps=bool(self.conf("smtps")),
            sasl=str(self.conf("sasl")),
            dovecot_sasl_path=postfix_config.DOVECOT_SASL_PATH if dovecot_sasl else None,
            broken_sasl=self._broken_sasl(config),
        )

    def _broken_sasl(self, config: PostfixConfig) -> dict[str, str]:
        """The submission services (587, and 465 with --postfix-tls-smtps) whose enabled
        SASL backend cannot work, with why: ``auto`` treats them as having none."""
        if str(self.conf("sasl")) == "none":
            return {}
        ports = [constants.SUBMISSION_PORT] + ([constants.SMTPS_PORT] if self.conf("smtps")
                                               else [])
        found = {}
        for service in [s for port in ports for s in config.services_on_port(port)]:
            if (config.in_force(service, "smtpd_sasl_type")[0],
                    config.in_force(service, "smtpd_sasl_path")[0]) == (
                    postfix_config.DOVECOT_SASL_TYPE, postfix_config.DOVECOT_SASL_PATH):
                continue  # the socket the plugin's Dovecot file declares
            problem = postfix_sasl.backend_problem(config, service)
            if problem:
                found[service.key] = problem
        return found

    def _dovecot_config(self) -> Optional[str]:
        """--postfix-tls-dovecot-config, else the dovecot.conf this machine's Dovecot
        reads (None: Dovecot is not installed)."""
        given = self.conf("dovecot-config")
        return str(given) if given else doveconf.find_config()

    def _wanted_services(self) -> tuple[bool, bool]:
        """(Postfix, Dovecot) from --postfix-tls-services; auto = Dovecot when installed.

        An installed Dovecot whose configuration file is not where it should be is
        refused, never skipped: it would go on serving its old certificate.
        """
        raw = str(self.conf("services")).strip().lower()
        if raw == "auto":
            config = self._dovecot_config()
            if config is None or process.find_tool("doveconf") is None:
                return True, False
            if not os.path.isfile(config):
                raise errors.PluginError(
                    f"Dovecot is installed but its configuration {config} does not exist: "
                    "name it with --postfix-tls-dovecot-config FILE, or leave Dovecot out "
                    "with --postfix-tls-services postfix."
                )
            return True, True
        names = {name.strip() for name in raw.split(",") if name.strip()}
        unknown = names - set(daemons.names())
        if unknown or Postfix.name not in names:
            raise errors.PluginError(
                f"--postfix-tls-services {raw} is not valid: give postfix or postfix,dovecot "
                "(this installer always configures Postfix)."
            )
        return True, Dovecot.name in names

    def _dovecot_sasl(self, config: PostfixConfig) -> bool:
        """Should submission authenticate through Dovecot's auth socket?"""
        sasl = str(self.conf("sasl"))
        if sasl == Dovecot.name and self._dovecot is None:
            raise errors.PluginError(
                "--postfix-tls-sasl dovecot needs Dovecot, which is not configured here: "
                "install dovecot-core or use --postfix-tls-sasl auto."
            )
        if self._dovecot is None or sasl == "none" or not self.conf("submission"):
            return False
        if sasl == Dovecot.name or postfix_config.uses_dovecot_socket(config):
            # Asked for, or already wired (by an earlier deploy): keep the listener,
            # or Dovecot's reload would remove the socket submission depends on.
            return True
        # auto: a stopped Dovecot has no socket, and smtpd without its SASL backend
        # dies ("no SASL authentication mechanisms"), so only wire a running one. An
        # enabled backend that cannot work (Cyrus without a password source) is none.
        missing = not postfix_config.has_sasl_backend(config) or bool(self._broken_sasl(config))
        return missing and bool(self._dovecot.running())

    # -- certbot.interfaces.Plugin -------------------------------------------

    def prepare(self) -> None:
        """Postfix present, its configuration readable and sane, version known, lock taken."""
        self.discover(test=True)
        assert self._postfix is not None
        util.lock_dir_until_exit(self._postfix.config_dir)
        self._purge_key_backups()

    def discover(self, test: bool = True) -> None:
        """Find Postfix (and Dovecot) and refuse what the install refuses, writing
        nothing: what ``prepare`` and ``certbot-postfix-tls plan`` share. ``test``:
        also run ``postfix check`` (which may create Postfix's missing directories, so
        ``plan`` leaves it out)."""
        self._postfix = Postfix(self.conf("postfix-dir"))
        config = self._postfix.read()
        if test:
            self.config_test()
        if config.version < (2, 11):
            raise errors.NotSupportedError(
                f"Postfix {config.main.get('mail_version')} is too old: "
                "smtpd_tls_security_level needs Postfix 2.11 or newer."
            )
        _, want_dovecot = self._wanted_services()
        if want_dovecot:
            self._dovecot = Dovecot(self._dovecot_config() or doveconf.DEFAULT_CONFIG)
            self._dovecot.check_syntax()

    def _purge_key_backups(self) -> None:
        """Earlier versions checkpointed the derived key+chain files: remove those copies
        of private keys from certbot's backups (the checkpoints stay usable)."""
        dirs = pipeline.checkpoint_dirs(self.config.backup_dir, self.config.in_progress_dir,
                                        self.config.temp_checkpoint_dir)
        cleaned = pipeline.purge_key_backups(self.config.config_dir, dirs)
        if cleaned:
            display_util.notify(
                f"postfix-tls: removed copies of private keys from {len(cleaned)} checkpoint(s) "
                f"in {self.config.backup_dir} (earlier versions saved them; rollback rebuilds "
                "those files from the lineages instead)"
            )

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
        # Read -> render -> write under one hold of the lock (released by save()).
        self._held.enter_context(plugin_lock(self.config.config_dir))
        try:
            self._staged = self.stage(lineage)
        except BaseException:
            self._held.close()
            raise

    def stage(self, lineage: certs.Lineage, dry: bool = False) -> Staged:
        """What deploying ``lineage`` writes, rendered (``pipeline.render``) and not yet
        written. ``dry`` (``plan``): DNS updates and flags only said, not done."""
        material = certs.load_material(lineage)  # mismatch/missing: refuse before any change
        config = self.instance.read()
        state = State.load(self.config.config_dir, self.instance.state_key(self.config.config_dir))
        owner = self._dovecot_owner(state)
        if owner is not None:
            # Another Postfix instance's deploys configure this Dovecot: one file, one
            # owner, so the instances never overwrite each other's Dovecot settings.
            self.notify(
                f"postfix-tls: Dovecot ({owner.dovecot_config}) is configured by the "
                f"deploys to Postfix {owner.postfix_dir}; this instance leaves it alone."
            )
            self._dovecot = None
        elif state.dovecot_config and self._dovecot is None:
            # Deployed to Dovecot before: it stays configured and renewed, never
            # silently left serving an old certificate.
            self._dovecot = Dovecot(state.dovecot_config)
            self.notify(
                f"postfix-tls: Dovecot ({state.dovecot_config}) keeps the certificates an "
                "earlier deploy gave it and is still reloaded on renewal."
            )
        site = pipeline.Site(self.config.config_dir, daemons.ordered(
            [self.instance, *([self._dovecot] if self._dovecot else [])]))
        dovecot_sasl = self._dovecot_sasl(config)
        self._prospective_state(state, lineage, material, config, dovecot_sasl)
        desired = render(site, state, config, rebuild=[lineage.name],
                         policy=self._options(dovecot_sasl, config), dry=dry)
        return Staged(lineage, site, desired)

    def _dovecot_owner(self, state: State) -> Optional[State]:
        """The other instance's state that already configures this Dovecot, if any."""
        if self._dovecot is None:
            return None
        for other in State.load_all(self.config.config_dir):
            if other.instance != state.instance and other.dovecot_config == (
                self._dovecot.config_file
            ) and other.lineages:
                return other
        return None

    def _prospective_state(
        self,
        state: State,
        lineage: certs.Lineage,
        material: certs.Material,
        config: PostfixConfig,
        dovecot_sasl: bool,
    ) -> None:
        """Turn ``state`` into what it will be once this lineage is deployed."""
        others = [name for name in state.lineages if name != lineage.name]
        same_names = [name for name in others
                      if sorted(state.lineages[name].names) == sorted(material.names)]
        if config.version < (3, 4) and same_names:
            raise errors.PluginError(
                f"Postfix {config.main.get('mail_version')} serves one certificate only: "
                f"{same_names[0]} ({state.lineages[same_names[0]].key_type or 'its key type'}) "
                f"and {lineage.name} ({material.key_type}) cannot be served side by side "
                "(smtpd_tls_chain_files needs Postfix 3.4); keep one of them."
            )
        if config.version < (3, 4) and others:
            raise errors.PluginError(
                f"Postfix {config.main.get('mail_version')} serves one certificate only "
                f"(SNI needs Postfix 3.4): {others[0]} stays deployed; undeploy it first "
                f"(certbot-postfix-tls undeploy --cert-name {others[0]}) to switch."
            )
        previous = state.lineages.get(lineage.name)
        resolver = self.conf("dane-resolver") or (previous.dane_resolver if previous else None)
        if resolver:
            lookup.parse_resolver(str(resolver))  # refused before any change
        update = self.conf("dane-update") or (previous.dane_update if previous else None)
        if update:
            Updater.from_file(os.path.abspath(str(update)))
        state.add(
            DeployedLineage(
                name=lineage.name,
                key_path=lineage.key_path,
                fullchain_path=lineage.fullchain_path,
                chain_file=lineage.chain_file,
                names=material.names,
                renewable=lineage.in_live,
                key_group=str(self.conf("key-group")),
                # What is served now and a DANE hold outlive a re-install (dane/gate.py).
                expected=previous.expected if previous else {},
                held=previous.held if previous else {},
                dane=str(self.conf("dane") or (previous.dane if previous else "auto")),
                dane_resolver=str(resolver) if resolver else None,
                dane_names=_name_list(self.conf("dane-names"))
                if self.conf("dane-names") is not None
                else (previous.dane_names if previous else []),
                dane_update=os.path.abspath(str(update)) if update else None,
                dane_retire=previous.dane_retire if previous else [],
            ),
            pin=bool(self.conf("default")),
        )
        state.postfix_dir = self.instance.config_dir
        state.dovecot_config = self._dovecot.config_file if self._dovecot else None
        state.verify = bool(self.conf("verify"))
        state.verify_address = str(self.conf("verify-address"))
        state.verify_ports = listeners.parse_ports(str(self.conf("verify-ports")))
        if self.conf("dovecot-sessions"):  # unset: what an earlier deploy recorded stays
            state.dovecot_sessions = str(self.conf("dovecot-sessions"))
        if dovecot_sasl and not state.sasl_listener:
            state.sasl_listener = postfix_config.dovecot_socket(config)
        if config.version >= (3, 4):
            state.sni_map_type = sni.map_type(
                config.map_types, config.main.get("default_database_type", "hash")
            )

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
            note = f"postfix-tls: deploy {staged.lineage.name}"

            def checkpoint(existing: set[str], created: list[str]) -> None:
                self.add_to_checkpoint(existing, note, temporary)
                if created:
                    self.reverter.register_file_creation(temporary, *created)

            try:
                with plugin_lock(self.config.config_dir):
                    try:
                        snapshot = pipeline.write(staged.site, staged.desired, checkpoint)
                    except (errors.Error, OSError):
                        # Nothing half-applied: the snapshot is restored; drop the
                        # checkpoint.
                        self.reverter.recovery_routine()
                        self._staged = None
                        raise
            finally:
                self._held.close()  # the hold deploy_cert took
            staged.applied = True
            # The state and the hooks are not read by the daemons; postmap's index of an
            # unchanged SNI table differs in its bytes, not in what it answers.
            config_dir, instance = self.config.config_dir, staged.desired.state.instance
            staged.changed = snapshot.changed(
                [staged.desired.state.file(config_dir)]
                + [hooks.hook_path(config_dir, kind) for kind in hooks.KINDS]
                + [sni.index_path(config_dir, kind, instance) for kind in sni.INDEX_SUFFIX])
            logger.debug("postfix-tls: the write changed %s", staged.changed or "nothing")
            self._report(staged)
        if title and not temporary:
            self.finalize_checkpoint(title)

    def _report(self, staged: Staged) -> None:
        desired, state = staged.desired, staged.desired.state
        lines = [f"postfix-tls: deployed {staged.lineage.name} to Postfix in "
                 f"{self.instance.config_dir} (default certificate: {state.default}; "
                 f"served by SNI: {', '.join(sorted(state.lineages))})"]
        lines += [f"  {line}" for plan in desired.plans.values() for line in plan.report()]
        lines += [f"  note: {note}" if not note.startswith(("dovecot:", "key permissions:"))
                  else f"  {note}" for note in desired.notes]
        lines += [f"  note: postconf: {warning}" for warning in self.instance.warnings()]
        lines += [f"  not checked: {label}: {why}"
                  for daemon in staged.site.daemons for label, why in daemon.unchecked(state)]
        display_util.notify("\n".join(lines))
        for warning in desired.warnings:
            self._warn(warning)

    def rollback_checkpoints(self, rollback: int = 1) -> None:
        """Undo the last checkpoints, then rebuild the derived key+chain files and SNI
        table from the restored state and each lineage's current certificate (they are
        never checkpointed: a rollback must not bring back old keys)."""
        with plugin_lock(self.config.config_dir):
            try:
                self.reverter.rollback_checkpoints(rollback)
            except errors.ReverterError as exc:
                raise errors.PluginError(
                    f"Rolling back the Postfix configuration failed: {exc}"
                ) from exc
            self._regenerate()
        self._staged = None

    def recovery_routine(self) -> None:
        with plugin_lock(self.config.config_dir):
            super().recovery_routine()
            self._regenerate()

    def _regenerate(self) -> None:
        pipeline.regenerate(self.config.config_dir, self._warn)

    def config_test(self) -> None:
        self.instance.check()

    def restart(self) -> None:
        """Reload the configured services once (never restart them) and verify.

        During ``certbot renew`` with intact directory hooks, the post hook
        reloads once for the whole run, so this defers to it. A stopped
        service keeps its new configuration for its next start.
        """
        config_dir = self.config.config_dir
        state = State.load(config_dir, self.instance.state_key(config_dir))
        renewing = getattr(self.config, "verb", None) == "renew"
        if renewing and getattr(self.config, "directory_hooks", True) and hooks.all_intact(
            config_dir
        ):
            logger.info("postfix-tls: the post hook reloads once at the end of this renewal run")
            return
        # After a rollback the state may be gone or older than what this run
        # touched: reload every service this installer manages, whatever it says.
        state.postfix_dir = state.postfix_dir or self.instance.config_dir
        if self._dovecot is not None:
            state.dovecot_config = state.dovecot_config or self._dovecot.config_file
        staged = self._staged
        judged = [staged.lineage.name] if staged is not None and staged.applied else None
        with plugin_lock(config_dir):
            site = pipeline.Site.from_state(config_dir, state)
            if staged is not None and staged.changed == [] and not state.pending:
                # Nothing the daemons read changed and no reload is pending: with certbot
                # >= 5.3, `certbot run` on a deployed lineage ran the deploy and post hooks
                # (which deployed, reloaded and verified the renewal) before this. A second
                # reload would cut Dovecot's sessions again for nothing: verify only, and
                # reload after all if what is served is not what was deployed.
                if not pipeline.activate(site, state, [], judged, self._quiet):
                    logger.info("postfix-tls: nothing changed since the last reload; "
                                "verified without reloading")
                    return
            problems = pipeline.activate(site, state, site.names(), judged, self._warn)
            if problems:
                raise errors.MisconfigurationError(
                    "Verification after reload failed, so the change is rolled back: "
                    + "; ".join(problems)
                )
            state = State.load(config_dir, state.instance)
            if state.pending and state.lineages:
                state.pending, state.renewed = [], []
                state.save(config_dir)

    @staticmethod
    def _quiet(message: str) -> None:
        logger.info("postfix-tls: %s", message)

    @staticmethod
    def _warn(message: str) -> None:
        logger.info("postfix-tls: %s", message)
        display_util.notify(f"WARNING: {message}")

    # -- certbot.interfaces.RenewDeployer --------------------------------------

    def renew_deploy(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        """Re-stage a renewed lineage exactly as the deploy hook does (idempotent)."""
        result = renewal.run_deploy_hook(self.config.config_dir,
                                         os.path.dirname(lineage.fullchain_path))
        if result.code:
            raise errors.PluginError(result.message)


def _name_list(value: object) -> list[str]:
    """--postfix-tls-dane-names: a comma (or space) separated list of host names."""
    return sorted({part.strip().rstrip(".").lower()
                   for part in str(value).replace(",", " ").split() if part.strip()})
