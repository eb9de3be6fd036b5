"""Dovecot's TLS change, decided on the configuration text alone.

The plugin owns one file (certificates, SNI ``local_name`` blocks, the SASL socket for
Postfix, ``shutdown_clients``) and only ever touches other files by commenting out, with
a marker, the lines that would compete with it. Everything here is pure (``plan_config``
works on a ``ConfigTree``), so it is unit-tested on real Debian 12 (2.3) and Debian 13
(2.4) trees.

Syntax by version (checked against 2.3.19 and 2.4.1):
- 2.3: ``ssl_cert = </path`` (``<`` = read the file; quoting the value turns
  the ``<`` into a literal, so paths are written unquoted);
- 2.4: ``ssl_server_cert_file = /path``; the same settings may also be written
  inside a top-level ``ssl_server { cert_file = ... }`` block, which is treated
  as top level here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import constants, sni
from certbot_postfix_tls._internal.daemons.base import DaemonPlan
from certbot_postfix_tls._internal.daemons.dovecot.conftree import (
    ConfigTree,
    Setting,
    main_includes,
    unquote,
)
from certbot_postfix_tls._internal.state import State

MARKER = "#certbot-postfix-tls# "
"""Prefix of every line the plugin commented out in a file it does not own."""

DEBIAN_PLUGIN_NAME = "99-certbot-postfix-tls.conf"  # sorts after Debian's conf.d files
PLUGIN_NAME = "certbot-postfix-tls.conf"

# Server certificate settings that must not compete with the plugin's file.
# The alt_ pair is a second (e.g. ECDSA) certificate Dovecot would still serve.
CERT_SETTINGS_23 = ("ssl_cert", "ssl_key", "ssl_alt_cert", "ssl_alt_key")
CERT_SETTINGS_24 = (
    "ssl_server_cert_file",
    "ssl_server_key_file",
    "ssl_server_alt_cert_file",
    "ssl_server_alt_key_file",
)
# 2.4 short names inside a top-level ``ssl_server { }`` block.
SSL_SERVER_SHORT_24 = ("cert_file", "key_file", "alt_cert_file", "alt_key_file")

# --postfix-tls-dovecot-sessions: what a reload does to established IMAP/POP3 sessions.
# Dovecot 2.3 and 2.4 decide it with one setting, shutdown_clients (default yes): with
# it, a reload SIGTERMs every process of the old configuration 6 s later
# (src/master/service.c services_destroy/services_kill_timeout) and an imap process
# ends its sessions idle for 10 s at once, the others when they reach 10 s idle
# (src/lib-master/master-service-settings.c sets die_with_master from it;
# src/imap/main.c imap_die). No other setting or doveadm command keeps them: see README.
SESSIONS_CUT = "cut"
SESSIONS_KEEP = "keep"
SESSION_MODES = (SESSIONS_CUT, SESSIONS_KEEP)
SHUTDOWN_CLIENTS = "shutdown_clients"

# Values written unquoted (2.3's `<file` only works unquoted; 2.4 expands % and $).
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./@+=:,~-]*$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_SAFE_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.?$")


@dataclass(frozen=True)
class CertFiles:
    """The certificate Dovecot should serve: full chain and private key paths, and
    optionally a second one of another key type (ECDSA beside RSA)."""

    fullchain: str
    key: str
    alt_fullchain: Optional[str] = None
    alt_key: Optional[str] = None


@dataclass
class DovecotPlan(DaemonPlan):
    """Every file to write or remove, which of them are new, and what to tell the
    administrator."""

    writes: dict[str, str] = field(default_factory=dict)  # path -> full new content
    creates: list[str] = field(default_factory=list)  # paths in writes that do not exist yet
    removes: list[str] = field(default_factory=list)  # files to delete (the plugin's own)

    @property
    def empty(self) -> bool:
        return not (self.writes or self.removes)


def plugin_layout(config_file: str, text: str) -> tuple[str, Optional[str]]:
    """Where the plugin's file goes, and which file must include it (None: a glob does).

    Debian's and RHEL/Fedora's dovecot.conf read ``conf.d/*.conf``: the file is
    conf.d/99-certbot-postfix-tls.conf, read after their own files (any top-level glob
    over an existing directory that the name matches will do). Otherwise it is
    certbot-postfix-tls.conf next to dovecot.conf, included from local.conf when
    dovecot.conf includes that (the place meant for local changes), else from
    dovecot.conf itself.
    """
    config_file = os.path.abspath(config_file)
    includes = main_includes(config_file, text)
    for pattern, _optional in includes:
        directory, base = os.path.split(pattern)
        if any(c in base for c in "*?[") and fnmatch(DEBIAN_PLUGIN_NAME, base):
            # A glob over a directory nobody created yet (iRedMail's
            # `!include_try /etc/dovecot/iredmail/*.conf`) is no place to write to.
            if not any(c in directory for c in "*?[") and os.path.isdir(directory):
                return os.path.join(directory, DEBIAN_PLUGIN_NAME), None
    here = os.path.dirname(config_file)
    local_conf = os.path.join(here, "local.conf")
    if any(pattern == local_conf for pattern, _optional in includes):
        return os.path.join(here, PLUGIN_NAME), local_conf
    return os.path.join(here, PLUGIN_NAME), config_file


# --- deciding -------------------------------------------------------------------------


def uses_24(version: Sequence[int]) -> bool:
    """Dovecot 2.4 renamed the certificate settings (ssl_server_cert_file)."""
    return tuple(version) >= (2, 4)


def _check_path(path: str) -> str:
    if not _SAFE_PATH.match(path):
        raise errors.PluginError(
            f"The certificate path {path!r} is not absolute or contains characters that "
            "cannot be written unquoted in Dovecot's configuration; use a lineage whose "
            "path has only letters, digits and ._-/@+=:,~."
        )
    return path


def _cert_lines(v24: bool, cert: CertFiles, indent: str, clear_alt: bool = False) -> list[str]:
    fullchain, key = _check_path(cert.fullchain), _check_path(cert.key)
    if v24:
        lines = [
            f"{indent}ssl_server_cert_file = {fullchain}",
            f"{indent}ssl_server_key_file = {key}",
        ]
    else:
        lines = [f"{indent}ssl_cert = <{fullchain}", f"{indent}ssl_key = <{key}"]
    if cert.alt_fullchain and cert.alt_key:
        alt_chain, alt_key = _check_path(cert.alt_fullchain), _check_path(cert.alt_key)
        if v24:
            lines += [f"{indent}ssl_server_alt_cert_file = {alt_chain}",
                      f"{indent}ssl_server_alt_key_file = {alt_key}"]
        else:
            lines += [f"{indent}ssl_alt_cert = <{alt_chain}", f"{indent}ssl_alt_key = <{alt_key}"]
    elif clear_alt:
        # A local_name block inherits the default's alternative certificate: without
        # this, clients of that key type asking for these names would get the default's.
        names = ("ssl_server_alt_cert_file", "ssl_server_alt_key_file") if v24 else (
            "ssl_alt_cert", "ssl_alt_key")
        lines += [f"{indent}{name} =" for name in names]
    return lines


def render_plugin_file(
    version: Sequence[int],
    cert: CertFiles,
    sasl_listener: Optional[str] = None,
    sni: Sequence[tuple[Sequence[str], CertFiles]] = (),
    keep_sessions: bool = False,
) -> str:
    """The plugin's Dovecot file: default cert, ``shutdown_clients = no`` when
    ``keep_sessions``, SNI ``local_name`` blocks, SASL socket.

    Deterministic (SNI names sorted, first lineage wins a name) so that planning
    again gives the same bytes, whatever order the lineages were deployed in.
    """
    v24 = uses_24(version)
    lines = [
        "# Managed by certbot-postfix-tls: the certificate Dovecot serves for IMAP/POP3.",
        "# Rewritten on every deploy; `certbot rollback` restores the previous state.",
        "",
        *_cert_lines(v24, cert, ""),
    ]
    if keep_sessions:
        lines += [
            "",
            "# --postfix-tls-dovecot-sessions keep: a reload (every renewal) leaves established",
            "# IMAP/POP3 sessions open. `dovecot stop` then leaves them running too.",
            f"{SHUTDOWN_CLIENTS} = no",
        ]
    by_name: dict[str, CertFiles] = {}
    for names, files in sni:
        for name in names:
            if not _SAFE_NAME.match(name):
                raise errors.PluginError(
                    f"{name!r} is not a host name Dovecot's local_name can match; "
                    "remove it from the certificate's names."
                )
            by_name.setdefault(name.lower().rstrip("."), files)
    for name in sorted(by_name):
        clear_alt = bool(cert.alt_fullchain) and not by_name[name].alt_fullchain
        lines += ["", f"local_name {name} {{",
                  *_cert_lines(v24, by_name[name], "  ", clear_alt), "}"]
    if sasl_listener:
        if not _SAFE_PATH.match(sasl_listener):
            raise errors.PluginError(
                f"The SASL socket path {sasl_listener!r} is not absolute or contains "
                "characters Dovecot's configuration cannot hold unquoted."
            )
        lines += [
            "",
            "# Postfix's SASL (smtpd_sasl_type = dovecot) for the submission service.",
            "service auth {",
            f"  unix_listener {sasl_listener} {{",
            "    mode = 0660",
            "    user = postfix",
            "    group = postfix",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def declared_auth_listener(
    tree: ConfigTree, socket_path: str, plugin_file: str
) -> Optional[tuple[str, int]]:
    """(file, line) of an operator's ``service auth { unix_listener <socket_path> }``.

    Such a listener (Debian's commented example uncommented, Modoboa's with mode 0666,
    ...) is reused as is: its path, mode, user and group stay, and the plugin's file
    declares none (two listeners on one path would fight over the socket). A relative
    listener name is relative to base_dir; 2.4 may also name the path with ``path =``.
    """
    base_dir = constants.DOVECOT_BASE_DIR
    for setting in tree.settings:
        if not setting.blocks and setting.name == "base_dir" and setting.value:
            base_dir = setting.value
    wanted = os.path.normpath(socket_path)

    def listener(headers: tuple[str, ...]) -> Optional[str]:
        if len(headers) < 2 or headers[-2] != "service auth":
            return None
        kind, _, name = headers[-1].partition(" ")
        return unquote(name) if kind == "unix_listener" else None

    def same(name: str) -> bool:
        return os.path.normpath(os.path.join(base_dir, name)) == wanted

    for block in tree.blocks:
        name = listener(block.headers)
        if block.path != plugin_file and name is not None and same(name):
            return block.path, block.lineno
    for setting in tree.settings:
        if (setting.path != plugin_file and setting.name == "path"
                and listener(setting.blocks) is not None and same(setting.value)):
            return setting.path, setting.lineno
    return None


def operator_setting(tree: ConfigTree, name: str, plugin_file: str) -> Optional[Setting]:
    """The last ``name = ...`` outside the plugin's file (in any block), if any: a
    setting the operator chose, which the plugin's file never adds again."""
    found = [s for s in tree.settings if s.name == name and s.path != plugin_file]
    return found[-1] if found else None


def competing_settings(tree: ConfigTree, version: Sequence[int], plugin_file: str) -> list[Setting]:
    """Top-level server cert/key settings outside the plugin's file.

    Settings inside ``local_name``/``protocol``/... blocks of other files are the
    operator's and are left alone; a 2.4 top-level ``ssl_server { }`` block is the
    same as top level.
    """
    v24 = uses_24(version)
    names = CERT_SETTINGS_24 if v24 else CERT_SETTINGS_23
    result = []
    for setting in tree.settings:
        if setting.path == plugin_file:
            continue
        if not setting.blocks and setting.name in names:
            result.append(setting)
        elif (
            v24
            and setting.blocks == ("ssl_server",)
            and setting.name in (*names, *SSL_SERVER_SHORT_24)
        ):
            result.append(setting)
    return result


def comment_out(text: str, settings: Sequence[Setting]) -> str:
    """``text`` with the lines of ``settings`` prefixed by MARKER, every other byte kept."""
    lines = text.splitlines(keepends=True)
    marked: set[int] = set()
    for setting in settings:
        marked.update(range(setting.first_line, setting.end_line))
    return "".join(MARKER + line if i in marked else line for i, line in enumerate(lines))


def uncomment(text: str) -> str:
    """Undo ``comment_out`` (for undeploy when the reverter's checkpoint is gone)."""
    return "".join(
        line[len(MARKER) :] if line.startswith(MARKER) else line
        for line in text.splitlines(keepends=True)
    )


def _include_line(include_from: str, plugin_file: str) -> str:
    if os.path.dirname(include_from) == os.path.dirname(plugin_file):
        return f"!include {os.path.basename(plugin_file)}"
    return f"!include {plugin_file}"


def plan_config(
    tree: ConfigTree,
    version: Sequence[int],
    plugin_file: str,
    include_from: Optional[str],
    cert: CertFiles,
    sasl_listener: Optional[str] = None,
    sni: Sequence[tuple[Sequence[str], CertFiles]] = (),
    sessions: str = SESSIONS_CUT,
) -> DovecotPlan:
    """Every file change that makes ``cert`` the only server certificate in effect.

    ``sessions`` ``keep`` adds ``shutdown_clients = no`` to the plugin's file unless
    the operator's configuration sets shutdown_clients (theirs stays in force).
    Pure: works on ``tree`` (from ``read_config``, which must also have read
    ``plugin_file`` and ``include_from`` as extras). Planning again after applying
    the result gives an empty plan.
    """
    plan = DovecotPlan()
    new_text: dict[str, str] = {}

    keep_sessions = sessions == SESSIONS_KEEP
    own = operator_setting(tree, SHUTDOWN_CLIENTS, plugin_file) if keep_sessions else None
    if own is not None:
        plan.notes.append(
            f"--postfix-tls-dovecot-sessions keep: {own.path} line {own.lineno} already sets "
            f"{SHUTDOWN_CLIENTS} = {own.value}, which stays in force (the plugin adds none)"
        )
        keep_sessions = False

    declared = declared_auth_listener(tree, sasl_listener, plugin_file) if sasl_listener else None
    if declared is not None:
        plan.notes.append(
            f"kept the auth listener {sasl_listener} declared in {declared[0]} line "
            f"{declared[1]} as it is (its mode, user and group)"
        )
        sasl_listener = None
    wanted = render_plugin_file(version, cert, sasl_listener, sni, keep_sessions)
    current = tree.text(plugin_file)
    if current != wanted:
        new_text[plugin_file] = wanted
        if current is None:
            plan.creates.append(plugin_file)
        kind = "2.4 ssl_server_cert_file/key_file" if uses_24(version) else "2.3 ssl_cert/ssl_key"
        if keep_sessions:
            kind += f"; {SHUTDOWN_CLIENTS} = no: reloads keep established IMAP/POP3 sessions"
        plan.notes.append(f"wrote {plugin_file} ({kind} for {cert.fullchain})")

    by_file: dict[str, list[Setting]] = {}
    for setting in competing_settings(tree, version, plugin_file):
        by_file.setdefault(setting.path, []).append(setting)
    commented: dict[str, str] = {}
    for path, settings in by_file.items():
        commented[path] = comment_out(tree.files[path], settings)
        for setting in settings:
            plan.notes.append(
                f"commented out {setting.name} in {path} line {setting.lineno}: "
                f"only {os.path.basename(plugin_file)} sets the certificate now"
            )

    # Write order (``apply`` follows it): the plugin's file, the line including it,
    # and only then the competing lines commented out. A kill between two writes
    # leaves both certificates set (Dovecot takes the later one), never `ssl = yes`
    # without a certificate.
    if include_from is not None and not tree.included(plugin_file):
        base = commented.pop(include_from, tree.text(include_from))
        line = _include_line(include_from, plugin_file)
        if base is None:
            plan.creates.append(include_from)
            base = ""
        elif base and not base.endswith("\n"):
            base += "\n"
        new_text[include_from] = (
            base + "# certbot-postfix-tls: the certificate for IMAP/POP3 (certbot rollback "
            "removes this)\n" + line + "\n"
        )
        plan.notes.append(f"added `{line}` to {include_from}")
    new_text.update(commented)

    plan.writes = new_text
    return plan


def removal_plan(tree: ConfigTree, plugin_file: str, include_from: Optional[str]) -> DovecotPlan:
    """What takes the plugin out again: its file goes, the lines it commented out come
    back, its include line goes. Checked afterwards like any change (``doveconf -x``):
    the operator's own certificate files may have gone since (a removed snakeoil pair),
    and Dovecot would then refuse to start."""
    writes: dict[str, str] = {}
    for path, text in tree.files.items():
        if path != plugin_file and MARKER in text:
            writes[path] = uncomment(text)
    if include_from:
        # The include line goes after every other file has its lines back (a kill in
        # between leaves both certificates set), then the plugin's file (``removes``).
        text = writes.pop(include_from, tree.text(include_from) or "")
        line = _include_line(include_from, plugin_file) + "\n"
        if line in text or MARKER in text:
            writes[include_from] = text.replace(line, "")
    notes = [f"restored the lines certbot-postfix-tls had commented out in {path}"
             for path in sorted(writes)]
    return DovecotPlan(writes=writes, removes=[plugin_file], notes=notes)


def sni_entries(state: State) -> list[tuple[list[str], CertFiles]]:
    """``local_name`` entries for every lineage but the default (served without SNI)
    and its partner."""
    default = set(sni.partners(state).get(str(state.default), []))
    return [
        (list(lineage.names), sni_files(state, name))
        for name, lineage in sorted(state.lineages.items())
        if name not in default
    ]


def sni_files(state: State, name: str) -> CertFiles:
    """Dovecot's certificate for ``name``: its partner of the other key type as the
    alternative certificate."""
    members = [state.lineages[m] for m in sni.partners(state)[name]]
    first = members[0]
    alt = members[1] if len(members) > 1 else None
    return CertFiles(first.fullchain_path, first.key_path,
                     alt.fullchain_path if alt else None, alt.key_path if alt else None)
