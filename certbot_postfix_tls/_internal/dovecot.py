"""Dovecot: find its configuration files, decide the TLS changes, check and reload.

Dovecot has no ``postconf -e``: its configuration is text spread over
``!include``d files. The plugin therefore owns one file and
only ever touches other files by commenting out, with a marker, the lines that
would compete with it. Deciding (``plan_config``) is a pure function of the
files' text, so it is unit-tested on real Debian 12 (2.3) and Debian 13 (2.4)
trees; talking to Dovecot (``doveconf``, ``doveadm``) is the ``Dovecot`` class.

Syntax by version (checked against 2.3.19 and 2.4.1):
- 2.3: ``ssl_cert = </path`` (``<`` = read the file; quoting the value turns
  the ``<`` into a literal, so paths are written unquoted);
- 2.4: ``ssl_server_cert_file = /path``; the same settings may also be written
  inside a top-level ``ssl_server { cert_file = ... }`` block, which is treated
  as top level here.
"""

from __future__ import annotations

import glob
import grp
import logging
import os
import pwd
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import certs, constants, process
from certbot_postfix_tls._internal.verify import Endpoint, choose_address

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = constants.CLI_DEFAULTS["dovecot_config"]
# Where packaged Dovecots keep dovecot.conf: Debian/Ubuntu and RHEL/Fedora, then the
# FreeBSD port (built with --sysconfdir=/usr/local/etc). Looked at, in this order, when
# the file doveconf was built to read does not exist.
KNOWN_CONFIGS = (DEFAULT_CONFIG, "/usr/local/etc/dovecot/dovecot.conf")
MARKER = "#certbot-postfix-tls# "
"""Prefix of every line the plugin commented out in a file it does not own."""

DEBIAN_PLUGIN_NAME = "99-certbot-postfix-tls.conf"  # sorts after Debian's conf.d files
PLUGIN_NAME = "certbot-postfix-tls.conf"
DEFAULT_BASE_DIR = "/run/dovecot"

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

LOGIN_SERVICES = {"imap-login": "imap", "pop3-login": "pop3"}

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

# Dovecot include nesting is shallow in practice; this only stops include loops.
_MAX_INCLUDE_DEPTH = 20
# Values written unquoted (2.3's `<file` only works unquoted; 2.4 expands % and $).
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./@+=:,~-]*$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_SAFE_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.?$")
_INCLUDE = re.compile(r"^!(include_try|include)\s+(.+)$")
_SETTING = re.compile(r"^([A-Za-z0-9_./-]+)\s*=")


@dataclass(frozen=True)
class CertFiles:
    """The certificate Dovecot should serve: full chain and private key paths, and
    optionally a second one of another key type (ECDSA beside RSA)."""

    fullchain: str
    key: str
    alt_fullchain: Optional[str] = None
    alt_key: Optional[str] = None


@dataclass
class DovecotPlan:
    """Every file to write, which of them are new, and what to tell the administrator."""

    writes: dict[str, str] = field(default_factory=dict)  # path -> full new content
    creates: list[str] = field(default_factory=list)  # paths in writes that do not exist yet
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.writes


@dataclass(frozen=True)
class Setting:
    """One ``name = value`` line (or continued lines) of a configuration file."""

    path: str
    first_line: int  # 0-based index of the first physical line
    end_line: int  # index after the last physical line (continuations included)
    name: str
    value: str
    blocks: tuple[str, ...]  # enclosing block headers, outermost first

    @property
    def lineno(self) -> int:
        """1-based line number, as Dovecot reports it."""
        return self.first_line + 1


@dataclass(frozen=True)
class Block:
    """One block opening (``header {``) of a configuration file."""

    path: str
    lineno: int  # 1-based
    headers: tuple[str, ...]  # this block's header last, enclosing ones before it


@dataclass(frozen=True)
class Include:
    """One ``!include``/``!include_try`` line and what it matched."""

    path: str  # the including file
    lineno: int  # 1-based
    pattern: str  # absolute glob
    optional: bool
    blocks: tuple[str, ...]
    matches: tuple[str, ...]


@dataclass
class ConfigTree:
    """The text of every file Dovecot reads for one dovecot.conf, in reading order."""

    main: str
    files: dict[str, str] = field(default_factory=dict)
    settings: list[Setting] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    # Files the plan may write that Dovecot does not read (yet): path -> text or None.
    extra: dict[str, Optional[str]] = field(default_factory=dict)

    def text(self, path: str) -> Optional[str]:
        """The current text of a file, None when it does not exist."""
        if path in self.files:
            return self.files[path]
        return self.extra.get(path)

    def included(self, path: str) -> bool:
        """Whether a top-level include (of the main file's level) covers ``path``."""
        return any(
            not inc.blocks and (path in inc.matches or fnmatch(path, inc.pattern))
            for inc in self.includes
        )


# --- reading configuration files --------------------------------------------------------


def _strip_comment(line: str) -> str:
    """The line without its ``#`` comment ('#' inside double quotes is kept)."""
    quoted = False
    for i, char in enumerate(line):
        if char == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:i]
    return line


def _logical_lines(text: str) -> list[tuple[int, int, str]]:
    """(first, end, code) per logical line: backslash continuations joined, comments cut."""
    physical = text.splitlines()
    result: list[tuple[int, int, str]] = []
    i = 0
    while i < len(physical):
        first = i
        line = physical[i]
        while line.endswith("\\") and i + 1 < len(physical):
            i += 1
            line = line[:-1] + physical[i]
        i += 1
        result.append((first, i, _strip_comment(line).strip()))
    return result


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def read_config(
    config_file: str, extra: Sequence[str] = (), skip_missing_includes: bool = False
) -> ConfigTree:
    """Read ``config_file`` and every file it includes, as Dovecot would.

    ``!include`` and ``!include_try`` take globs relative to the including file,
    expanded in sorted order, and may appear inside blocks (their settings are then
    inside that block). An ``!include`` that matches nothing is an error for Dovecot,
    so it raises MisconfigurationError here too. ``extra`` files are read as well
    (or recorded as missing) without being parsed.
    """
    tree = ConfigTree(main=os.path.abspath(config_file))
    try:
        text = Path(tree.main).read_text()
    except OSError as exc:
        raise errors.MisconfigurationError(
            f"Cannot read the Dovecot configuration {tree.main}: {exc.strerror}; "
            "pass the right file with --postfix-tls-dovecot-config."
        ) from exc
    _parse_file(tree, tree.main, text, (), 0, skip_missing_includes)
    for path in extra:
        path = os.path.abspath(path)
        if path not in tree.files:
            try:
                tree.extra[path] = Path(path).read_text()
            except FileNotFoundError:
                tree.extra[path] = None
            except OSError as exc:
                raise errors.MisconfigurationError(
                    f"Cannot read {path}: {exc.strerror}; fix its permissions and retry."
                ) from exc
    return tree


def _parse_file(
    tree: ConfigTree,
    path: str,
    text: str,
    outer: tuple[str, ...],
    depth: int,
    skip_missing: bool,
) -> None:
    tree.files[path] = text
    blocks = list(outer)
    for first, end, code in _logical_lines(text):
        if not code:
            continue
        include = _INCLUDE.match(code)
        if include:
            _follow_include(tree, path, first + 1, include, tuple(blocks), depth, skip_missing)
        elif code.startswith("}"):
            if len(blocks) > len(outer):
                blocks.pop()
        elif code.endswith("{") and "=" not in code.split("{", 1)[0]:
            blocks.append(" ".join(code[:-1].split()))
            tree.blocks.append(Block(path, first + 1, tuple(blocks)))
        else:
            setting = _SETTING.match(code)
            if setting:
                value = _unquote(code[setting.end() :])
                tree.settings.append(
                    Setting(path, first, end, setting.group(1), value, tuple(blocks))
                )


def _follow_include(
    tree: ConfigTree,
    path: str,
    lineno: int,
    include: re.Match[str],
    blocks: tuple[str, ...],
    depth: int,
    skip_missing: bool,
) -> None:
    optional = include.group(1) == "include_try"
    pattern = os.path.normpath(
        os.path.join(os.path.dirname(path), os.path.expanduser(_unquote(include.group(2))))
    )
    matches = tuple(sorted(p for p in glob.glob(pattern) if os.path.isfile(p)))
    tree.includes.append(Include(path, lineno, pattern, optional, blocks, matches))
    if not matches and not optional and not skip_missing:
        raise errors.MisconfigurationError(
            f"{path} line {lineno} includes {pattern}, which matches no file, so Dovecot "
            "would refuse to start: create the file, or use !include_try, or remove the line."
        )
    if depth >= _MAX_INCLUDE_DEPTH:
        raise errors.MisconfigurationError(
            f"{path} line {lineno}: includes are nested more than {_MAX_INCLUDE_DEPTH} deep "
            "(an include loop?); fix the !include lines."
        )
    for match in matches:
        try:
            text = Path(match).read_text()
        except OSError as exc:
            if optional and isinstance(exc, FileNotFoundError):
                continue
            raise errors.MisconfigurationError(
                f"Cannot read {match} (included from {path} line {lineno}): {exc.strerror}."
            ) from exc
        _parse_file(tree, match, text, blocks, depth + 1, skip_missing)


def _main_includes(config_file: str, text: str) -> list[tuple[str, bool]]:
    """(absolute pattern, optional) of the top-level includes written in the main file."""
    result: list[tuple[str, bool]] = []
    depth = 0
    for _first, _end, code in _logical_lines(text):
        if not code:
            continue
        include = _INCLUDE.match(code)
        if include and depth == 0:
            pattern = os.path.join(os.path.dirname(config_file), _unquote(include.group(2)))
            result.append((os.path.normpath(pattern), include.group(1) == "include_try"))
        elif code.startswith("}"):
            depth = max(0, depth - 1)
        elif code.endswith("{") and "=" not in code.split("{", 1)[0]:
            depth += 1
    return result


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
    includes = _main_includes(config_file, text)
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


def _uses_24(version: Sequence[int]) -> bool:
    return tuple(version) >= (2, 4)


def _check_path(path: str) -> str:
    if not _SAFE_PATH.match(path):
        raise errors.PluginError(
            f"The certificate path {path!r} is not absolute or contains characters that "
            "cannot be written unquoted in Dovecot's configuration; use a lineage whose "
            "path has only letters, digits and ._-/@+=:,~."
        )
    return path


def _cert_lines(v24: bool, cert: CertFiles, indent: str) -> list[str]:
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
    v24 = _uses_24(version)
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
        lines += ["", f"local_name {name} {{", *_cert_lines(v24, by_name[name], "  "), "}"]
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
    base_dir = DEFAULT_BASE_DIR
    for setting in tree.settings:
        if not setting.blocks and setting.name == "base_dir" and setting.value:
            base_dir = setting.value
    wanted = os.path.normpath(socket_path)

    def listener(headers: tuple[str, ...]) -> Optional[str]:
        if len(headers) < 2 or headers[-2] != "service auth":
            return None
        kind, _, name = headers[-1].partition(" ")
        return _unquote(name) if kind == "unix_listener" else None

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
    v24 = _uses_24(version)
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
        kind = "2.4 ssl_server_cert_file/key_file" if _uses_24(version) else "2.3 ssl_cert/ssl_key"
        if keep_sessions:
            kind += f"; {SHUTDOWN_CLIENTS} = no: reloads keep established IMAP/POP3 sessions"
        plan.notes.append(f"wrote {plugin_file} ({kind} for {cert.fullchain})")

    by_file: dict[str, list[Setting]] = {}
    for setting in competing_settings(tree, version, plugin_file):
        by_file.setdefault(setting.path, []).append(setting)
    for path, settings in by_file.items():
        new_text[path] = comment_out(tree.files[path], settings)
        for setting in settings:
            plan.notes.append(
                f"commented out {setting.name} in {path} line {setting.lineno}: "
                f"only {os.path.basename(plugin_file)} sets the certificate now"
            )

    if include_from is not None and not tree.included(plugin_file):
        base = new_text.get(include_from, tree.text(include_from))
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

    plan.writes = new_text
    return plan


# --- effective configuration (doveconf output) -----------------------------------------


@dataclass
class Section:
    """One block of ``doveconf`` output: its settings and its sub-blocks, in order."""

    settings: dict[str, str] = field(default_factory=dict)
    children: list[tuple[str, Section]] = field(default_factory=list)


def parse_doveconf(text: str) -> Section:
    """Parse what ``doveconf`` prints (``name = value`` lines, ``header {`` ... ``}``)."""
    root = Section()
    stack = [root]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "}":
            if len(stack) > 1:
                stack.pop()
        elif line.endswith("{") and "=" not in line:
            child = Section()
            stack[-1].children.append((" ".join(line[:-1].split()), child))
            stack.append(child)
        else:
            name, sep, value = line.partition("=")
            if sep:
                stack[-1].settings[name.strip()] = value.strip()
    return root


def _protocols(root: Section) -> set[str]:
    if "protocols" in root.settings:  # 2.3: protocols = imap pop3
        return set(root.settings["protocols"].split())
    for header, child in root.children:  # 2.4: protocols { imap = yes }
        if header == "protocols":
            return {name for name, value in child.settings.items() if value == "yes"}
    return set()


def _addresses(listen: str, verify_address: str) -> list[str]:
    """Where to connect for a ``listen`` value: ``*`` (all IPv4), ``::`` (all IPv6,
    IPv6-only as Dovecot binds it), addresses, names. The wildcards are one listener
    each, reached at verify_address when it is of their family, else at the loopback
    address of their family (``::1`` for ``listen = ::``); every listed address is
    one endpoint."""
    result: list[str] = []
    wildcards: list[str] = []
    for item in re.split(r"[,\s]+", listen.strip()):
        item = item.strip("[]")
        if not item:
            continue
        if item in ("*", "0.0.0.0", "::"):
            wildcards.append("::" if item == "::" else "0.0.0.0")
            continue
        if item not in result:
            result.append(item)
    if wildcards:
        address = choose_address(wildcards, verify_address)
        if address not in result:
            result.insert(0, address)
    return result


def endpoints_from_doveconf(text: str, verify_address: str) -> list[Endpoint]:
    """IMAP/POP3 TLS endpoints from ``doveconf protocols listen ssl service/...`` output.

    Listeners with port 0 are disabled; haproxy listeners expect a PROXY header
    first, which the verifier cannot send, so they are left out; ``ssl = no``
    means no TLS anywhere. A listener's own address (2.3 ``address``, 2.4
    ``listen``) wins over the global ``listen``; ``*``/``::`` become verify_address.
    """
    root = parse_doveconf(text)
    if root.settings.get("ssl", "yes") == "no":
        return []
    protocols = _protocols(root)
    listen = root.settings.get("listen", "*, ::")
    result: list[Endpoint] = []
    for header, service in root.children:
        kind, _, name = header.partition(" ")
        if kind != "service":
            continue
        protocol = service.settings.get("protocol") or LOGIN_SERVICES.get(name, "")
        is_login = name in LOGIN_SERVICES or service.settings.get("type") == "login"
        if not is_login or protocol not in ("imap", "pop3") or protocol not in protocols:
            continue
        for lheader, listener in service.children:
            lkind, _, lname = lheader.partition(" ")
            if lkind != "inet_listener":
                continue
            try:
                port = int(listener.settings.get("port", "0") or "0")
            except ValueError:
                continue
            if port == 0 or listener.settings.get("haproxy") == "yes":
                continue
            tls = "implicit" if listener.settings.get("ssl") == "yes" else "starttls"
            where = listener.settings.get("address") or listener.settings.get("listen") or listen
            for address in _addresses(where, verify_address):
                endpoint = Endpoint("dovecot", protocol, address, port, tls, lname or protocol)
                if endpoint not in result:
                    result.append(endpoint)
    return result


parse_version = process.version_tuple


# --- which dovecot.conf -----------------------------------------------------------------

_HEADER = re.compile(r"^#\s*\S+(?:\s+\([0-9a-f]+\))?:\s*(/\S+)\s*$", re.MULTILINE)
_OPEN_FAILED = re.compile(r"open\((/[^)]+)\) failed")


def built_in_config() -> Optional[str]:
    """The dovecot.conf this machine's doveconf reads without ``-c``, None when
    Dovecot is not installed or does not say.

    doveconf names it in its first line (``# 2.3.19.1 (9b53102964): /etc/dovecot/dovecot.conf``),
    also when the file is missing (then its Fatal line says ``open(PATH) failed``).
    """
    if process.find_tool("doveconf") is None:
        return None
    proc = process.run(["doveconf", "-n"], what="doveconf -n", check=False)
    for pattern, text in ((_HEADER, proc.stdout), (_OPEN_FAILED, proc.stderr)):
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def find_config() -> Optional[str]:
    """The dovecot.conf to configure when none is given: the one doveconf was built to
    read if it exists, else the first of KNOWN_CONFIGS that exists (a FreeBSD-style
    /usr/local/etc/dovecot with no /etc/dovecot), else the built-in path (missing;
    the caller says so). None when Dovecot is not installed."""
    built_in = built_in_config()
    if built_in is None and process.find_tool("doveconf") is None:
        return None
    if built_in and os.path.isfile(built_in):
        return built_in
    for candidate in KNOWN_CONFIGS:
        if os.path.isfile(candidate):
            return candidate
    return built_in or DEFAULT_CONFIG


# --- the service ----------------------------------------------------------------------


def _doveconf_problem(proc_stderr: str, proc_stdout: str, returncode: int) -> str:
    """doveconf's own reason: its Fatal/Error line without the program prefix."""
    lines = [line for line in proc_stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Fatal:" in line or "Error:" in line:
            return line.split(": ", 1)[-1].replace("Fatal: ", "").replace("Error: ", "").strip()
    return process.last_line(proc_stderr or proc_stdout) or f"exit {returncode}"


class Dovecot:
    """One Dovecot instance, addressed by its dovecot.conf (``doveconf -c FILE``)."""

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
            main_text = Path(self.config_file).read_text()
        except OSError as exc:
            raise errors.MisconfigurationError(
                f"Cannot read {self.config_file}: {exc.strerror}; run certbot as root."
            ) from exc
        self.plugin_file, self.include_from = plugin_layout(self.config_file, main_text)

    def _detect_version(self) -> tuple[int, ...]:
        if process.find_tool("dovecot") is not None:
            proc = process.run(["dovecot", "--version"], what="dovecot --version", check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                return parse_version(proc.stdout)
        # doveconf's header line: "# 2.3.19.1 (9b53102964): /etc/dovecot/dovecot.conf"
        proc = self._doveconf("-n", check=False)
        match = re.match(r"#\s*(\S+)", proc.stdout)
        if match:
            return parse_version(match.group(1))
        raise errors.NoInstallationError(
            f"Cannot tell which Dovecot version reads {self.config_file} (dovecot --version "
            "and doveconf -n failed): check the Dovecot installation."
        )

    @property
    def uses_24_syntax(self) -> bool:
        """Dovecot 2.4 renamed the certificate settings (ssl_server_cert_file)."""
        return _uses_24(self.version)

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
                f"{_doveconf_problem(proc.stderr, proc.stdout, proc.returncode)}; fix it "
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
                f"{_doveconf_problem(proc.stderr, proc.stdout, proc.returncode)}; "
                "Dovecot would not start or reload with it."
            )

    def base_dir(self) -> str:
        """Dovecot's runtime directory (master.pid lives there)."""
        proc = self._doveconf("base_dir", check=False)
        values = parse_doveconf(proc.stdout).settings if proc.returncode == 0 else {}
        return values.get("base_dir") or DEFAULT_BASE_DIR

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

    def plan(
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

    def removal_plan(self) -> DovecotPlan:
        """Writes that take the plugin out again (its file is deleted by the caller):
        the lines it commented out come back, its include line goes."""
        tree = self.read()
        writes: dict[str, str] = {}
        for path, text in tree.files.items():
            if path != self.plugin_file and MARKER in text:
                writes[path] = uncomment(text)
        if self.include_from:
            text = writes.get(self.include_from, tree.text(self.include_from) or "")
            line = _include_line(self.include_from, self.plugin_file) + "\n"
            if line in text:
                writes[self.include_from] = text.replace(line, "")
        notes = [f"restored the lines certbot-postfix-tls had commented out in {path}"
                 for path in sorted(writes)]
        return DovecotPlan(writes=writes, creates=[], notes=notes)

    def apply(self, plan: DovecotPlan) -> None:
        """Write the plan's files (new files 0644 like Debian's conf.d; modes kept)."""
        for path, text in plan.writes.items():
            certs.write_atomic(path, text.encode(), mode=None)  # mode and owner kept

    def endpoints(self, verify_address: str) -> list[Endpoint]:
        """Enabled IMAP/POP3 TLS endpoints of the effective configuration."""
        proc = self._doveconf("protocols", "listen", "ssl", "service/imap-login",
                              "service/pop3-login")
        return endpoints_from_doveconf(proc.stdout, verify_address)

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


def count_sessions(text: str) -> dict[str, int]:
    """Connections per protocol from ``doveadm -f tab who -1`` (2.3 names the column
    ``proto``, 2.4 ``service``)."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    header = lines[0]
    column = next((i for i, name in enumerate(header) if name in ("proto", "service")), None)
    counts: dict[str, int] = {}
    for row in lines[1:]:
        proto = row[column] if column is not None and column < len(row) else "?"
        counts[proto] = counts.get(proto, 0) + 1
    return counts


