"""Dovecot's configuration files as Dovecot reads them: the include tree.

Dovecot has no ``postconf -e``: its configuration is text spread over ``!include``d
files. ``read_config`` reads them all, in reading order, with every setting, block and
include and where it is, so that ``plan`` can decide on the text alone.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Optional

from certbot import errors

# Dovecot include nesting is shallow in practice; this only stops include loops.
_MAX_INCLUDE_DEPTH = 20
_INCLUDE = re.compile(r"^!(include_try|include)\s+(.+)$")
_SETTING = re.compile(r"^([A-Za-z0-9_./-]+)\s*=")


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


def unquote(value: str) -> str:
    """A value without its surrounding double quotes."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def read_text(path: str) -> str:
    """A Dovecot configuration file's text. Dovecot reads bytes: a comment or value in
    Latin-1 is valid for it, so undecodable bytes are kept as surrogates (written back
    unchanged by ``encode_text``) instead of failing every deploy and renewal."""
    return Path(path).read_bytes().decode("utf-8", "surrogateescape")


def encode_text(text: str) -> bytes:
    """The bytes of a text ``read_text`` read (and edited): undecodable bytes restored."""
    return text.encode("utf-8", "surrogateescape")


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
        text = read_text(tree.main)
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
                tree.extra[path] = read_text(path)
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
                value = unquote(code[setting.end() :])
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
        os.path.join(os.path.dirname(path), os.path.expanduser(unquote(include.group(2))))
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
            text = read_text(match)
        except OSError as exc:
            if optional and isinstance(exc, FileNotFoundError):
                continue
            raise errors.MisconfigurationError(
                f"Cannot read {match} (included from {path} line {lineno}): {exc.strerror}."
            ) from exc
        _parse_file(tree, match, text, blocks, depth + 1, skip_missing)


def main_includes(config_file: str, text: str) -> list[tuple[str, bool]]:
    """(absolute pattern, optional) of the top-level includes written in the main file."""
    result: list[tuple[str, bool]] = []
    depth = 0
    for _first, _end, code in _logical_lines(text):
        if not code:
            continue
        include = _INCLUDE.match(code)
        if include and depth == 0:
            pattern = os.path.join(os.path.dirname(config_file), unquote(include.group(2)))
            result.append((os.path.normpath(pattern), include.group(1) == "include_try"))
        elif code.startswith("}"):
            depth = max(0, depth - 1)
        elif code.endswith("{") and "=" not in code.split("{", 1)[0]:
            depth += 1
    return result

