"""``certbot-postfix-tls plan`` and ``undeploy --plan``: the exact change, shown first.

The install's plan is what ``certbot install --installer postfix-tls`` would do with the
same options: the installer's own ``discover`` and ``stage`` (``pipeline.render``, the
one decision), then ``pipeline.preview`` instead of ``pipeline.write`` (the same steps,
computed: Postfix's postconf runs on a private copy of main.cf and master.cf). The
undeploy's is ``ops.undeploy.plan``. Nothing is written: no file, mode, group, lock
file or checkpoint; no daemon is reloaded. Files holding key material are shown by path,
mode and owner only.

Exit codes, as ``diff`` and Ansible's check mode: 0 nothing to change, 1 changes shown,
2 refused (the install's own sentence), 3 usage.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional, cast

import configargparse
from certbot import configuration, errors

from certbot_postfix_tls._internal import certs, constants, permissions, pipeline
from certbot_postfix_tls._internal.configurator import PostfixTLSConfigurator
from certbot_postfix_tls._internal.ops import undeploy
from certbot_postfix_tls._internal.tls_client import Endpoint

OPTION_PREFIX = "postfix-tls-"
EXIT_UNCHANGED, EXIT_CHANGES, EXIT_REFUSED = 0, 1, 2


@dataclass
class Plan:
    """Everything an operation would change, and what it would refuse."""

    operation: str  # "install NAME" or "undeploy NAME"
    preview: pipeline.Preview = field(default_factory=pipeline.Preview)
    reload: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refused: Optional[str] = None

    @property
    def changes(self) -> bool:
        shown = self.preview
        return bool(shown.files or shown.key_files or shown.permissions or shown.group
                    or shown.directories)

    @property
    def exit_code(self) -> int:
        if self.refused is not None:
            return EXIT_REFUSED
        return EXIT_CHANGES if self.changes else EXIT_UNCHANGED

    def add(self, site: pipeline.Site, desired: pipeline.Desired,
            shown: pipeline.Preview) -> None:
        """One instance's preview; a file two instances write keeps its first 'before'."""
        mine = self.preview
        for path, (old, new) in shown.files.items():
            mine.files[path] = (mine.files[path][0] if path in mine.files else old, new)
        mine.key_files += [k for k in shown.key_files if k not in mine.key_files]
        mine.permissions += [p for p in shown.permissions if p not in mine.permissions]
        mine.group = mine.group or shown.group
        mine.directories += [d for d in shown.directories if d not in mine.directories]
        mine.endpoints += [e for e in shown.endpoints if e not in mine.endpoints]
        self.reload += [name for name in site.names() if name not in self.reload]
        self.notes += [n for n in desired.notes if n not in self.notes]
        self.warnings += [w for w in desired.warnings if w not in self.warnings]


# --- the options: certbot install's, with the same meaning and defaults --------------


def add_installer_options(parser: argparse.ArgumentParser) -> None:
    """Every ``--postfix-tls-*`` option ``certbot install`` takes, from the installer's
    own declaration (same defaults, types and choices)."""
    group = parser.add_argument_group("the installer's options (as certbot install takes them)")

    def add(name: str, *args: Any, **kwargs: Any) -> None:
        group.add_argument(f"--{OPTION_PREFIX}{name}", *args,
                           dest=(OPTION_PREFIX + name).replace("-", "_"), **kwargs)

    PostfixTLSConfigurator.add_parser_arguments(add)


def config_files(explicit: Optional[str]) -> list[str]:
    """certbot's configuration files that exist, in the order it reads them (a later
    one wins): /etc/letsencrypt/cli.ini, the user's, then ``-c FILE``."""
    user = os.path.join(os.environ.get("XDG_CONFIG_HOME", "~/.config"),
                        *constants.CERTBOT_USER_CONFIG_FILE)
    found = [path for path in (constants.CERTBOT_CONFIG_FILE, os.path.expanduser(user))
             if os.path.isfile(path)]
    return [*found, explicit] if explicit else found


def with_config_files(argv: Sequence[str], explicit: Optional[str]) -> list[str]:
    """``argv`` with the --postfix-tls-* settings of certbot's configuration files put
    right after the ``plan`` command, so the command line wins over them as it does for
    certbot install (certbot reads the files with ConfigArgParse: the same parser reads
    them here). The files' other settings are certbot's own and are not the plan's."""
    settings: dict[str, Any] = {}
    for path in config_files(explicit):
        try:
            with open(path, encoding="utf-8") as stream:
                settings.update(configargparse.DefaultConfigFileParser().parse(stream))
        except (OSError, UnicodeDecodeError, configargparse.ConfigFileParserException) as exc:
            raise errors.Error(f"certbot's configuration file {path} cannot be read ({exc}): "
                               "certbot install could not read it either.") from exc
    extra: list[str] = []
    for key, value in settings.items():
        if not key.startswith(OPTION_PREFIX):
            continue
        if key == f"{OPTION_PREFIX}default":  # the one flag: true or false, as certbot reads it
            extra += [f"--{key}"] if str(value).lower() in ("true", "yes", "1") else []
        else:
            extra += [f"--{key}", str(value)]
    at = list(argv).index("plan") + 1
    return [*argv[:at], *extra, *argv[at:]]


@contextmanager
def _installer(args: argparse.Namespace) -> Iterator[PostfixTLSConfigurator]:
    """The installer as ``certbot install`` makes it, its notes collected. certbot's
    reverter makes its backup directory when created: here that is a private temporary
    one, never used (``plan`` writes no checkpoint)."""
    with tempfile.TemporaryDirectory(prefix="postfix-tls-plan-") as scratch:
        options = {key: value for key, value in vars(args).items()
                   if key.startswith(OPTION_PREFIX.replace("-", "_"))}
        namespace = SimpleNamespace(
            config_dir=os.path.abspath(args.config_dir),
            work_dir=os.path.abspath(args.work_dir),
            backup_dir=os.path.join(scratch, "backups"),
            in_progress_dir=os.path.join(scratch, "IN_PROGRESS"),
            temp_checkpoint_dir=os.path.join(scratch, "temp_checkpoint"),
            strict_permissions=False,
            verb="install",
            **options,
        )
        yield PostfixTLSConfigurator(cast(configuration.NamespaceConfig, namespace),
                                     "postfix-tls")


def _lineage(args: argparse.Namespace) -> certs.Lineage:
    """The lineage certbot install --cert-name NAME (or the live directory) deploys."""
    config_dir = os.path.abspath(args.config_dir)
    live_dir = (os.path.abspath(args.lineage) if args.lineage
                else os.path.join(config_dir, "live", args.cert_name))
    if not os.path.isdir(live_dir):
        raise errors.Error(
            f"No certificate found with name {os.path.basename(live_dir)} ({live_dir} does "
            "not exist): certbot certificates lists the names."
        )
    return certs.Lineage.from_live_dir(live_dir, config_dir)


def install_plan(args: argparse.Namespace) -> Plan:
    """What ``certbot install --installer postfix-tls`` would change."""
    name = os.path.basename(os.path.abspath(args.lineage)) if args.lineage else args.cert_name
    result = Plan(f"install {name}")
    try:
        lineage = _lineage(args)
        with _installer(args) as installer:
            installer.notify = result.notes.append
            installer.discover(test=False)
            staged = installer.stage(lineage, dry=True)
            result.add(staged.site, staged.desired, pipeline.preview(staged.site, staged.desired))
    except errors.Error as exc:
        result.refused = str(exc)
    except OSError as exc:
        result.refused = _unreadable(exc)
    return result


def _unreadable(exc: OSError) -> str:
    return (f"{exc.filename or 'a file'} cannot be read ({exc.strerror}): run "
            "certbot-postfix-tls plan as root, as certbot install runs.")


def undeploy_plan(args: argparse.Namespace) -> Plan:
    """What ``certbot-postfix-tls undeploy`` would change."""
    result = Plan(f"undeploy {args.cert_name}")
    try:
        planned = undeploy.plan(os.path.abspath(args.config_dir), os.path.abspath(args.work_dir),
                                args.cert_name, args.postfix_dir)
    except errors.Error as exc:
        result.refused = str(exc)
        return result
    except OSError as exc:
        result.refused = _unreadable(exc)
        return result
    for site, desired, shown in planned.steps:
        result.add(site, desired, shown)
    result.preview.permissions += planned.confine
    result.notes += planned.notes
    return result


# --- output --------------------------------------------------------------------------


def _lines(data: Optional[bytes]) -> list[str]:
    if data is None:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def unified_diff(path: str, old: Optional[bytes], new: Optional[bytes]) -> str:
    """``diff -u`` of one file, ``--- a/etc/postfix/main.cf`` style (``/dev/null`` for a
    file created or removed)."""
    relative = path.lstrip("/")
    text = "".join(difflib.unified_diff(
        _lines(old), _lines(new),
        "/dev/null" if old is None else f"a/{relative}",
        "/dev/null" if new is None else f"b/{relative}"))
    return text


def _action(old: Optional[bytes], new: Optional[bytes]) -> str:
    return "create" if old is None else "remove" if new is None else "change"


def _endpoint(endpoint: Endpoint) -> dict[str, Any]:
    return {"service": endpoint.service, "label": endpoint.label or endpoint.protocol,
            "address": endpoint.address, "port": endpoint.port, "tls": endpoint.tls}


def to_json(plan: Plan) -> dict[str, Any]:
    """The plan as one JSON object (the same content as the text)."""
    shown = plan.preview
    return {
        "operation": plan.operation,
        "changes": plan.changes,
        "refused": plan.refused,
        "files": [{"path": path, "action": _action(old, new),
                   "diff": unified_diff(path, old, new)}
                  for path, (old, new) in shown.files.items()],
        "key_files": [{"path": k.path, "action": k.action, "mode": f"{k.mode:04o}",
                       "owner": k.owner} for k in shown.key_files],
        "directories": [{"path": path, "mode": f"{mode:04o}"}
                        for path, mode in shown.directories],
        "permissions": [{"path": p.path, "before": p.before, "after": p.after}
                        for p in shown.permissions],
        "group": shown.group,
        "reload": plan.reload if plan.refused is None else [],
        "verify": [_endpoint(e) for e in shown.endpoints] if plan.refused is None else [],
        "notes": plan.notes,
        "warnings": plan.warnings,
    }


def to_text(plan: Plan) -> list[str]:
    """The plan for a terminal: the diffs first (``patch -p1`` applies them), then the
    files holding key material, modes, group, reloads and the ports verified."""
    if plan.refused is not None:
        return [f"REFUSED: {plan.operation}: {plan.refused}"]
    shown = plan.preview
    out = [unified_diff(path, old, new).rstrip("\n")
           for path, (old, new) in shown.files.items()]
    out += [f"key material ({k.action}, content not shown): {k.path} {k.mode:04o} {k.owner}"
            for k in shown.key_files]
    out += [f"directory (create): {path} {mode:04o}" for path, mode in shown.directories]
    out += [f"permissions: {p.path}: {p.before} -> {p.after}" for p in shown.permissions]
    if shown.group:
        out.append(f"group (create): {shown.group} "
                   f"({' '.join(permissions.group_add_argv(shown.group))})")
    out += [f"note: {note}" for note in plan.notes]
    out += [f"WARNING: {warning}" for warning in plan.warnings]
    if plan.reload:
        out.append(f"reload: {', '.join(plan.reload)} (never a restart)")
    out += [f"verify: {e.service} {e.label or e.protocol} {e.address}:{e.port} ({e.tls})"
            for e in shown.endpoints]
    count = len(shown.files) + len(shown.key_files)
    out.append(f"{plan.operation}: {count} file(s) would change; nothing was changed"
               if plan.changes else f"{plan.operation}: no changes")
    return out


def show(plan: Plan, as_json: bool, write: Any = print) -> int:
    """Print ``plan``; returns its exit code."""
    if as_json:
        write(json.dumps(to_json(plan), indent=2))
    else:
        for line in to_text(plan):
            write(line)
    return plan.exit_code


def run(args: argparse.Namespace) -> int:
    """The plan of ``args.command`` (``plan``: the install; ``undeploy --plan``)."""
    plan = install_plan(args) if args.command == "plan" else undeploy_plan(args)
    return show(plan, args.json)
