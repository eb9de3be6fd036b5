"""What the plugin deployed, where, and which reloads are pending.

One JSON file under <config-dir>/postfix-tls/, written atomically. It is the
input of the deployment pipeline (``pipeline.render``): every configuration
the plugin writes is a function of it. It holds paths and names, never key
material, so it is world-readable and ``verify`` works as a monitoring user.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from certbot import errors

from certbot_postfix_tls._internal import constants
from certbot_postfix_tls._internal.certs import write_atomic

FORMAT = 2


@dataclass
class DeployedLineage:
    """One lineage the plugin put into service."""

    name: str
    key_path: str
    fullchain_path: str
    chain_file: str  # the combined key+fullchain file Postfix reads
    names: list[str] = field(default_factory=list)
    renewable: bool = True  # lives in certbot's live/ directory
    key_group: str = constants.CLI_DEFAULTS["key_group"]  # re-applied on every renewal
    # The certificate as last deployed (SHA-256 of leaf and intermediates, names, expiry):
    # public data, so that verify needs no access to certbot's live/ directory.
    expected: dict[str, Any] = field(default_factory=dict)
    # DANE (dane/gate.py): "auto" obeys validated TLSA records, "ignore" (--postfix-tls-dane)
    # does not; the resolver to ask (--postfix-tls-dane-resolver; None: resolv.conf's).
    dane: str = "auto"
    dane_resolver: Optional[str] = None
    # More host names senders use to reach this lineage (--postfix-tls-dane-names), looked
    # up besides its certificate's, myhostname and the MX hosts pointing here (dane/names).
    dane_names: list[str] = field(default_factory=list)
    # While a renewed key waits for its TLSA record: the archive version Postfix serves
    # instead, the records to publish, when matching records were first seen (dane/gate.py).
    held: dict[str, Any] = field(default_factory=dict)
    # --postfix-tls-dane-update: the RFC 2136 credentials file that publishes the held
    # key's records, and the retired key's records to remove ({"record", "after"}).
    dane_update: Optional[str] = None
    dane_retire: list[dict[str, Any]] = field(default_factory=list)
    key_type: str = ""  # rsa, ecdsa: two lineages for the same names are served as a pair


@dataclass
class State:
    # Which Postfix instance this state is for: "" for Postfix's default instance
    # (<config-dir>/postfix-tls/state.json), else a key made from the instance's
    # config directory (<config-dir>/postfix-tls/instances/KEY/state.json). Each
    # instance has its own lineages, default certificate, SNI table and reloads.
    instance: str = ""
    postfix_dir: Optional[str] = None
    dovecot_config: Optional[str] = None
    verify_address: str = constants.CLI_DEFAULTS["verify_address"]
    verify: bool = True
    verify_ports: list[int] = field(default_factory=list)  # --postfix-tls-verify-ports; []: auto
    lineages: dict[str, DeployedLineage] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # deploy order (the default rule uses it)
    default: Optional[str] = None
    default_pinned: Optional[str] = None  # set by --postfix-tls-default
    sni_map_type: Optional[str] = None  # Postfix >= 3.4: the SNI table's map type
    pending: list[str] = field(default_factory=list)  # services awaiting a reload
    renewed: list[str] = field(default_factory=list)  # lineages the pending reload is for
    # Dovecot auth socket the plugin's Dovecot file declares (None: not wired by us).
    sasl_listener: Optional[str] = None
    # --postfix-tls-dovecot-sessions: "keep" puts shutdown_clients = no into the plugin's
    # Dovecot file (re-rendered from here on every renewal), "cut" leaves Dovecot's default.
    dovecot_sessions: str = constants.CLI_DEFAULTS["dovecot_sessions"]
    # What Postfix had before the plugin first changed it, for undeploying the last
    # lineage: main.cf parameter -> explicit value (None: not set in main.cf), and
    # "service/type/param" -> master.cf -o value (None: no such -o).
    baseline_main: dict[str, Optional[str]] = field(default_factory=dict)
    baseline_params: dict[str, Optional[str]] = field(default_factory=dict)
    added_services: list[str] = field(default_factory=list)  # "name/type" the plugin added
    # What the plugin last set, to tell an operator's later edit from its own.
    applied_main: dict[str, str] = field(default_factory=dict)
    applied_params: dict[str, str] = field(default_factory=dict)

    def add(self, lineage: DeployedLineage, pin: bool = False) -> None:
        """Record a deployed lineage (again: its entry is replaced, its place kept)."""
        self.lineages[lineage.name] = lineage
        if lineage.name not in self.order:
            self.order.append(lineage.name)
        if pin:
            self.default_pinned = lineage.name

    def remove(self, name: str) -> None:
        self.lineages.pop(name, None)
        self.order = [n for n in self.order if n != name]
        if self.default_pinned == name:
            self.default_pinned = None
        if self.default == name:
            self.default = None

    @staticmethod
    def directory(config_dir: str, instance: str = "") -> str:
        """Where an instance's state and SNI table live."""
        base = os.path.join(config_dir, constants.PLUGIN_DIR)
        return os.path.join(base, constants.INSTANCES_DIR, instance) if instance else base

    @classmethod
    def path(cls, config_dir: str, instance: str = "") -> str:
        return os.path.join(cls.directory(config_dir, instance), constants.STATE_FILE)

    def file(self, config_dir: str) -> str:
        """This state's own file."""
        return self.path(config_dir, self.instance)

    @classmethod
    def instances(cls, config_dir: str) -> list[str]:
        """Every instance with a state file, the default instance ("") first."""
        found = [""] if os.path.exists(cls.path(config_dir)) else []
        root = os.path.join(config_dir, constants.PLUGIN_DIR, constants.INSTANCES_DIR)
        if os.path.isdir(root):
            found += sorted(key for key in os.listdir(root)
                            if os.path.exists(cls.path(config_dir, key)))
        return found

    @classmethod
    def load_all(cls, config_dir: str) -> list[State]:
        """The states of every Postfix instance the plugin deployed to."""
        return [cls.load(config_dir, key) for key in cls.instances(config_dir)]

    @classmethod
    def load(cls, config_dir: str, instance: str = "") -> State:
        """The recorded state; an empty one when nothing was deployed yet."""
        path = cls.path(config_dir, instance)
        try:
            with open(path, encoding="utf-8") as handle:
                raw: dict[str, Any] = json.load(handle)
        except FileNotFoundError:
            return cls(instance=instance)
        except (OSError, ValueError) as exc:
            raise errors.PluginError(
                f"The plugin state {path} cannot be read ({exc}): restore it from "
                "the reverter backups or redeploy with certbot install."
            ) from None
        lineages = {
            name: DeployedLineage(**entry) for name, entry in raw.pop("lineages", {}).items()
        }
        raw.pop("format", None)
        raw["instance"] = instance
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(lineages=lineages, **known)

    def text(self) -> str:
        """The state file's content (what ``save`` writes)."""
        data = asdict(self)
        data["format"] = FORMAT
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save(self, config_dir: str) -> None:
        text = self.text()
        os.makedirs(self.directory(config_dir, self.instance), mode=0o755, exist_ok=True)
        write_atomic(self.file(config_dir), text.encode(), mode=0o644)


# --- renewals the deploy hook has not finished ------------------------------------------


def _renewals_dir(config_dir: str) -> str:
    return os.path.join(config_dir, constants.PLUGIN_DIR, constants.RENEWALS_DIR)


def mark_path(config_dir: str, name: str) -> str:
    return os.path.join(_renewals_dir(config_dir), name)


def mark_renewal(config_dir: str, name: str) -> str:
    """Record that ``name`` was renewed, before anything that can fail: the deploy hook's
    lock wait, reading the configuration, a kill. Returns the mark's path."""
    path = mark_path(config_dir, name)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    write_atomic(path, b"", mode=0o644)
    return path


def unfinished_renewals(config_dir: str) -> list[str]:
    """The renewed lineages whose deploy hook did not record them in a state's pending
    marks (it failed before, or was killed)."""
    try:
        entries = os.listdir(_renewals_dir(config_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e for e in entries if not e.startswith("."))


def clear_renewal(config_dir: str, name: str) -> None:
    """The renewal of ``name`` is recorded in the pending marks of every state serving it."""
    try:
        os.unlink(mark_path(config_dir, name))
    except FileNotFoundError:
        pass
