"""Several certificates on one server.

The default certificate (what a client without SNI gets) is the lineage whose
names include Postfix's myhostname; else the first one deployed; a lineage
deployed with --postfix-tls-default overrides both. Every lineage, the default
included, is also served by SNI for its names: Postfix through
``tls_server_sni_maps`` (a table built with ``postmap -F``, which embeds the
key material, so table and index are 0600 root), Dovecot through
``local_name`` blocks.
"""

from __future__ import annotations

import os
from typing import Optional

from certbot_postfix_tls._internal import certs, constants, process
from certbot_postfix_tls._internal.state import State

# What postmap appends to the table's name for its index, per map type.
INDEX_SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}


def map_path(config_dir: str, instance: str = "") -> str:
    """The SNI table of one Postfix instance (its state's directory)."""
    return os.path.join(State.directory(config_dir, instance), constants.SNI_MAP_FILE)


def index_path(config_dir: str, map_type: str, instance: str = "") -> str:
    return map_path(config_dir, instance) + INDEX_SUFFIX.get(map_type, ".db")


def map_type(map_types: set[str], default_type: str) -> str:
    """The table type for the SNI map: Postfix's default type when it can index it."""
    for kind in (default_type, "hash", "lmdb", "btree"):
        if kind in INDEX_SUFFIX and kind in map_types:
            return kind
    return "hash"


def choose_default(state: State, myhostname: str) -> Optional[str]:
    """The default lineage by the rule in this module's docstring."""
    if state.default_pinned in state.lineages:
        return state.default_pinned
    host = myhostname.strip().lower().rstrip(".")
    ordered = [name for name in state.order if name in state.lineages]
    ordered += sorted(set(state.lineages) - set(ordered))
    for name in ordered:
        if host and host in (n.lower() for n in state.lineages[name].names):
            return name
    return ordered[0] if ordered else None


# Served first where a client accepts both: smaller and faster.
_KEY_TYPE_ORDER = {"ecdsa": 0, "rsa": 1}


def partners(state: State) -> dict[str, list[str]]:
    """For each lineage, the lineages served together with it: itself, plus the other
    key type's lineage when exactly one lineage of each type has identical names
    (``certbot --key-type ecdsa`` and ``--key-type rsa`` for the same domains);
    ECDSA first. Anything else is served one per lineage."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, lineage in state.lineages.items():
        key = tuple(sorted(n.lower().rstrip(".") for n in lineage.names))
        groups.setdefault(key, []).append(name)
    result: dict[str, list[str]] = {}
    for members in groups.values():
        types = [state.lineages[m].key_type for m in members]
        if len(members) == 2 and all(types) and len(set(types)) == 2:
            ordered = sorted(members, key=lambda m: (
                _KEY_TYPE_ORDER.get(state.lineages[m].key_type, 9), m))
            for member in members:
                result[member] = ordered
        else:
            for member in members:
                result[member] = [member]
    return result


def unpaired_notes(state: State) -> list[str]:
    """Why lineages with identical names are not served as a pair."""
    notes = []
    pairs = partners(state)
    seen: dict[tuple[str, ...], list[str]] = {}
    for name, lineage in sorted(state.lineages.items()):
        seen.setdefault(tuple(sorted(lineage.names)), []).append(name)
    for members in seen.values():
        if len(members) > 1 and len(pairs[members[0]]) == 1:
            types = ", ".join(f"{m} ({state.lineages[m].key_type or '?'})" for m in members)
            notes.append(f"{types} have the same names but are not one RSA and one ECDSA "
                         "lineage: each is served on its own, the default rule decides")
    return notes


def chain_files(state: State, name: str) -> list[str]:
    """The key+chain files that serve ``name``'s names: its own and its partner's."""
    return [state.lineages[member].chain_file for member in partners(state)[name]]


def map_key(name: str) -> str:
    """Postfix looks up the client's name, then its parent domains as ``.example.com``."""
    name = name.strip().lower().rstrip(".")
    return name[1:] if name.startswith("*.") else name


def render_map(state: State) -> str:
    """``name chain-file`` lines; on a name two lineages share, the default wins, then
    the lineage that sorts first, so the table never depends on deploy order."""
    lines: dict[str, str] = {}
    ordered = ([state.default] if state.default in state.lineages else []) + sorted(
        name for name in state.lineages if name != state.default
    )
    for name in ordered:
        lineage = state.lineages[name]
        files = " ".join(chain_files(state, name))
        for host in lineage.names:
            lines.setdefault(map_key(host), files)
    body = "".join(f"{key} {path}\n" for key, path in sorted(lines.items()))
    return "# Written by certbot-postfix-tls: one line per certificate name.\n" + body


def write_map(text: str, path: str, postfix_dir: str, kind: str, rebuild: bool = True) -> None:
    """Write the SNI table and its index (0600 both, root's): built by ``postmap -F``
    into a temporary table beside it and renamed into place, the index first, so
    smtpd never opens a partial index and a kill leaves the previous one whole.

    ``rebuild`` False: the files the table names are unchanged, so when the table is
    unchanged too and its index current, nothing is written (``postmap -F`` copies the
    files into the index).
    """
    suffix = INDEX_SUFFIX.get(kind, ".db")
    if not rebuild and _same_text(path, text) and index_current(path, kind):
        return
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)  # a new instance's
    for stale in certs.stale_temps(path, ".tmp"):  # a build a kill cut short
        os.unlink(stale)
    fd, tmp = certs.create_temp(path, ".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode())
            handle.flush()
            os.fsync(handle.fileno())
        process.run(["postmap", "-c", postfix_dir, "-F", f"{kind}:{tmp}"],
                    what=f"postmap -F could not build the SNI table {path}")
        index_fd = os.open(tmp + suffix, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchown(index_fd, 0, 0)
            os.fchmod(index_fd, 0o600)  # it holds private keys
            os.fsync(index_fd)
        finally:
            os.close(index_fd)
        os.replace(tmp + suffix, path + suffix)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + suffix):
            if os.path.lexists(leftover):
                os.unlink(leftover)


def _same_text(path: str, text: str) -> bool:
    try:
        return certs.current_bytes(path) == text.encode()
    except OSError:  # a symbolic link or a directory planted there: rewritten
        return False


def index_current(path: str, kind: str) -> bool:
    """Whether the table's index exists and is newer than the table and every file it
    names (``postmap -F`` copies them in): an operation killed between writing them and
    ``postmap`` leaves an older index, which the next one rebuilds."""
    try:
        built = os.stat(path + INDEX_SUFFIX.get(kind, ".db")).st_mtime_ns
        with open(path, encoding="utf-8") as handle:
            named = [f for line in handle if not line.startswith("#")
                     for f in line.split()[1:]]
        return all(os.stat(source).st_mtime_ns <= built for source in [path, *named])
    except (OSError, UnicodeDecodeError):
        return False


def split_tables(value: str) -> list[str]:
    """The tables of a Postfix table-list parameter (comma or space separated;
    ``inline:{ ... }`` kept whole)."""
    tables: list[str] = []
    depth, current = 0, ""
    for char in value:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(0, depth - 1)
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                tables.append(current)
            current = ""
        else:
            current += char
    if current:
        tables.append(current)
    return tables


def merged_maps(current: str, ours: str) -> str:
    """``tls_server_sni_maps`` with the plugin's table after the operator's own ones:
    their names keep the certificates their tables give them; ours serve the rest."""
    others = [table for table in split_tables(current) if table != ours]
    return ", ".join([*others, ours])


def foreign_tables(current: str, ours: str) -> list[str]:
    """The operator's SNI tables, without the plugin's."""
    return [table for table in split_tables(current) if table != ours]


def foreign_entries(tables: list[str]) -> dict[str, str]:
    """name -> first file its entry lists, from the source files of the operator's SNI
    tables (``hash:/etc/postfix/sni.map`` reads /etc/postfix/sni.map). Parent-domain
    keys (``.example.net``) are left out: no single name stands for them."""
    entries: dict[str, str] = {}
    for table in tables:
        kind, _, path = table.partition(":")
        if kind not in (*INDEX_SUFFIX, "texthash") or not path.startswith("/"):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 2 or fields[0].startswith(("#", ".")):
                continue
            entries.setdefault(fields[0].lower(), fields[-1])
    return entries
