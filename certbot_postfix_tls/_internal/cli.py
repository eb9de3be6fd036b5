"""``certbot-postfix-tls``: verify, doctor, plan, undeploy and hook.

Exit codes follow the monitoring-plugin convention:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (usage errors included); ``plan`` and
``undeploy --plan`` those of ``diff``: 0 nothing to change, 1 changes shown, 2 refused,
3 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn, Optional

from certbot import errors

from certbot_postfix_tls._internal import (
    certs,
    constants,
    daemons,
    doctor,
    findings,
    metrics,
    services,
    tls_client,
    verify,
)
from certbot_postfix_tls._internal import plan as planning
from certbot_postfix_tls._internal.daemons.postfix.ctl import Postfix
from certbot_postfix_tls._internal.dane import records
from certbot_postfix_tls._internal.dane import report as dane_report
from certbot_postfix_tls._internal.doctor import ports, servers
from certbot_postfix_tls._internal.findings import Finding
from certbot_postfix_tls._internal.ops import dane_check, renewal, undeploy
from certbot_postfix_tls._internal.state import DeployedLineage, State


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; monitoring wants 3 (UNKNOWN)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(findings.EXIT_CODES["UNKNOWN"])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="certbot-postfix-tls",
        description="Check and manage what the postfix-tls certbot installer deployed.",
    )
    parser.add_argument("--config-dir", default=constants.CLI_DEFAULTS["config_dir"],
                        help="certbot's configuration directory (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("verify", help="handshake with every TLS endpoint")
    which = check.add_mutually_exclusive_group()
    which.add_argument("--cert-name", help="the lineage to check (default: every deployed one)")
    which.add_argument("--lineage", help="a lineage directory (live/NAME) to check")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--prometheus", metavar="FILE",
                       help="also write the result as Prometheus metrics to FILE (node_exporter "
                            "textfile collector format, replaced atomically); endpoints of a "
                            "stopped service are then checked too")
    _server_options(check)

    doc = sub.add_parser("doctor", help="the usual mail TLS failures, checked")
    doc.add_argument("--json", action="store_true", help="print one JSON object")
    _server_options(doc)

    plan = sub.add_parser(
        "plan", help="show what certbot install --installer postfix-tls would change, "
                     "changing nothing (exit 0: nothing, 1: changes shown, 2: refused)")
    which = plan.add_mutually_exclusive_group(required=True)
    which.add_argument("--cert-name", help="the lineage certbot install --cert-name would deploy")
    which.add_argument("--lineage", help="a lineage directory (live/NAME)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument("-c", "--config", metavar="FILE",
                      help="a certbot configuration file, read after /etc/letsencrypt/cli.ini "
                           "and ~/.config/letsencrypt/cli.ini as certbot install reads them: "
                           "their --postfix-tls-* settings apply, the command line wins")
    plan.add_argument("--work-dir", default=constants.CLI_DEFAULTS["work_dir"],
                      help="certbot's work directory (default: %(default)s)")
    planning.add_installer_options(plan)

    remove = sub.add_parser("undeploy", help="take one lineage out of service")
    remove.add_argument("--cert-name", required=True, help="the lineage to remove")
    remove.add_argument("--postfix-dir", metavar="DIR",
                        help="only from this Postfix instance (default: every instance)")
    remove.add_argument("--work-dir", default=constants.CLI_DEFAULTS["work_dir"],
                        help="certbot's work directory, where the undo checkpoint goes "
                             "(default: %(default)s)")
    remove.add_argument("--plan", action="store_true",
                        help="show what undeploy would change, changing nothing (exit 0: "
                             "nothing, 1: changes shown, 2: refused)")
    remove.add_argument("--json", action="store_true", help="with --plan: one JSON object")

    hook = sub.add_parser("hook", help="what the installed renewal hooks call")
    hook.add_argument("kind", choices=("deploy", "post"))

    tlsa = sub.add_parser("dane", help="renewals held back for TLSA records, and the records")
    tlsa.add_argument("action", choices=("check", "records"),
                      help="check: look up the TLSA records of held lineages again and put "
                           "into service those DNS is ready for; records: the TLSA set a key "
                           "rollover needs")
    tlsa.add_argument("--cert-name", help="records: only this lineage")

    return parser


def _server_options(parser: argparse.ArgumentParser) -> None:
    """Which Postfix and Dovecot to examine (default: the deployed ones, else the
    machine's own): the same as the installer's --postfix-tls-* options."""
    parser.add_argument("--postfix-dir", metavar="DIR",
                        help="Postfix configuration directory (default: postconf's own)")
    parser.add_argument("--dovecot-config", metavar="FILE",
                        help="Dovecot's dovecot.conf (default: the one doveconf reads)")


def _report(status: str, summary: str, endpoints: list[verify.EndpointResult],
            checks: list[Finding], as_json: bool) -> int:
    if as_json:
        print(json.dumps({
            "status": status,
            "summary": summary,
            "endpoints": [e.to_json() for e in endpoints],
            "checks": [c.to_json() for c in checks],
        }, indent=2))
    else:
        for result in endpoints:
            print(f"{result.status}: {result.service} {result.address}:{result.port} "
                  f"({result.tls}, SNI {result.sni or '-'}): {result.message}")
        for check in checks:
            print(f"{check.status}: {check.name}: {check.message}")
        print(f"{status}: {summary}")
    return findings.EXIT_CODES[status]


def _lineages_to_check(args: argparse.Namespace, state: State) -> list[certs.Lineage]:
    if args.lineage:
        return [certs.Lineage.from_live_dir(args.lineage, args.config_dir)]
    names = [args.cert_name] if args.cert_name else services.served_lineages(state)
    result = []
    for name in names:
        deployed = state.lineages.get(name)
        if deployed is None:
            raise errors.Error(
                f"The lineage {name} was not deployed by postfix-tls "
                f"(state {state.file(args.config_dir)}): deploy it with certbot install."
            )
        result.append(certs.Lineage.from_paths(name, deployed.key_path, deployed.fullchain_path,
                                               args.config_dir))
    return result


def _write_metrics(path: str, snapshot: metrics.Snapshot, checks: list[Finding]) -> None:
    try:
        metrics.write(path, snapshot)
    except errors.Error as exc:
        checks.append(Finding("prometheus", "UNKNOWN", str(exc)))


def cmd_verify(args: argparse.Namespace) -> int:
    """Handshake with every endpoint, with SNI for every name of every lineage."""
    try:
        return _verify(args)
    except errors.Error:
        if args.prometheus:  # the watchdog's metrics say UNKNOWN too
            failed: list[Finding] = []
            _write_metrics(args.prometheus, metrics.Snapshot("UNKNOWN", time.time()), failed)
            for check in failed:
                print(f"UNKNOWN: {check.message}", file=sys.stderr)
        raise


def _states(args: argparse.Namespace) -> list[State]:
    """The deployed instances to look at: the one in --postfix-dir, else all."""
    if getattr(args, "postfix_dir", None):
        key = Postfix(args.postfix_dir).state_key(args.config_dir)
        return [State.load(args.config_dir, key)]
    return State.load_all(args.config_dir) or [State()]


def _verify(args: argparse.Namespace) -> int:
    started = time.time()
    checks: list[Finding] = []
    results: list[verify.EndpointResult] = []
    checked: list[str] = []
    snapshot = metrics.Snapshot("UNKNOWN", started)
    states = _states(args)
    if args.cert_name:  # the instances that serve it
        states = [s for s in states if args.cert_name in s.lineages] or states[:1]
    for state in states:
        lineages = _lineages_to_check(args, state)
        if not lineages:
            continue
        checked += [lineage.name for lineage in lineages]
        where = f" (Postfix {state.postfix_dir})" if state.instance else ""
        if state.pending:
            checks.append(Finding(
                "pending-reload", "CRITICAL", services.pending_message(state, where)))
        checks += dane_report.verify_checks(state, [lineage.name for lineage in lineages])
        snapshot.services = list(dict.fromkeys([*snapshot.services,
                                                *daemons.configured_names(state)]))
        snapshot.pending = list(dict.fromkeys([*snapshot.pending, *state.pending]))
        try:
            checks += [Finding(name, "CRITICAL", message)
                       for name, message in services.stopped(state)]
            checks += [Finding("not-checked", "OK", f"{label}: {why}")
                       for label, why in services.unchecked(state)]
            for lineage in lineages:
                if lineage.name not in state.lineages:  # --lineage DIR not recorded: check it
                    state.lineages[lineage.name] = DeployedLineage(
                        lineage.name, lineage.key_path, lineage.fullchain_path,
                        lineage.chain_file
                    )
            if args.prometheus:
                snapshot.lineages = {
                    **snapshot.lineages,
                    **{lineage.name: services.expected_cert(state.lineages[lineage.name])
                       for lineage in lineages}}
            # With metrics, a stopped service's ports are checked too: their series stay
            # present, as down, instead of vanishing.
            results += services.check_all(
                state, [lineage.name for lineage in lineages], retry_seconds=0,
                endpoints_to_check=services.endpoints(state, include_stopped=True)
                if args.prometheus else None)
            if not args.cert_name and not args.lineage:  # the operator's own SNI names too
                results += services.check_foreign(args.config_dir, state, retry_seconds=0)
        except (errors.Error, tls_client.VerifyError) as exc:
            checks.append(Finding("configuration", "UNKNOWN", str(exc)))
    # A renewal whose deploy hook did not finish: the new certificate is not deployed.
    checks += renewal.unfinished_findings(args.config_dir)
    if not checked:
        return _verify_configured(args, snapshot)
    status = findings.worst([r.status for r in results] + [c.status for c in checks])
    if args.prometheus:
        snapshot.status, snapshot.results = status, results
        _write_metrics(args.prometheus, snapshot, checks)
        status = findings.worst([status] + [c.status for c in checks])
    bad = sum(1 for r in results if r.status != "OK")
    summary = (f"{len(results) - bad} of {len(results)} endpoint checks OK for "
               f"{', '.join(dict.fromkeys(checked))}")
    return _report(status, summary, results, checks, args.json)


def _verify_configured(args: argparse.Namespace, snapshot: metrics.Snapshot) -> int:
    """Nothing deployed by the plugin: what the configured Postfix and Dovecot serve on
    each TLS port (handshake, chain, expiry, renewed but not loaded)."""
    context = servers.find(args.config_dir, State(), args.postfix_dir, args.dovecot_config)
    context.probes = servers.probe_all(context)
    results = ports.endpoint_results(context)
    checks = servers.running_checks(context) + [
        Finding("deployed", "OK",
                f"not deployed by postfix-tls in {args.config_dir}: checked what the "
                "configured Postfix and Dovecot serve (certbot-postfix-tls doctor "
                "says what to fix)")]
    checks += [Finding("not-checked", "OK", f"{label}: {why}")
               for label, why in servers.unchecked(context)]
    status = findings.worst([r.status for r in results] + [c.status for c in checks])
    if args.prometheus:
        snapshot.status, snapshot.results = status, results
        snapshot.services = [daemon.name for daemon in (context.imap, context.mta)
                             if daemon is not None]
        _write_metrics(args.prometheus, snapshot, checks)
        status = findings.worst([status] + [c.status for c in checks])
    bad = sum(1 for r in results if r.status != "OK")
    summary = (f"{len(results) - bad} of {len(results)} TLS ports OK (not deployed by "
               "postfix-tls)")
    return _report(status, summary, results, checks, args.json)


def cmd_doctor(args: argparse.Namespace) -> int:
    results, checks = doctor.run(args.config_dir, args.postfix_dir, args.dovecot_config)
    status = findings.worst([r.status for r in results] + [c.status for c in checks])
    failing = [c.name for c in checks if c.status != "OK"]
    failing += [f"{r.port}/{r.sni or 'no-SNI'}" for r in results if r.status != "OK"]
    summary = f"{len(checks) + len(results) - len(failing)} of {len(checks) + len(results)} " \
        f"checks OK" + (f"; look at: {', '.join(failing)}" if failing else "")
    return _report(status, summary, results, checks, args.json)


def _warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


def cmd_undeploy(args: argparse.Namespace) -> int:
    if args.plan:
        return planning.run(args)
    problems = undeploy.undeploy(args.config_dir, args.work_dir, args.cert_name, print, _warn,
                                 args.postfix_dir)
    for problem in problems:
        print(f"CRITICAL: {problem}", file=sys.stderr)
    return findings.EXIT_CODES["CRITICAL" if problems else "OK"]


def cmd_hook(args: argparse.Namespace) -> int:
    """The renewal hooks: certbot only logs their output, so say it in one line."""
    if args.kind == "deploy":
        result = renewal.run_deploy_hook(args.config_dir, os.environ.get("RENEWED_LINEAGE"))
    else:
        result = renewal.run_post_hook(args.config_dir, _warn)
    print(result.message, file=sys.stderr if result.code else sys.stdout)
    return result.code


def cmd_dane(args: argparse.Namespace) -> int:
    """``dane records`` prints zone file lines; ``dane check`` activates what is ready."""
    if args.action == "records":
        for line in records.rollover_set(args.config_dir, args.cert_name):
            print(line)
        return findings.EXIT_CODES["OK"]
    result = dane_check.check(args.config_dir, _warn)
    for line in result.lines or ["OK: no lineage is held back for its TLSA records"]:
        print(line)
    return result.code


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; for ``plan``, after the --postfix-tls-* settings of certbot's
    configuration files, as certbot install takes them."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "plan":
        args = parser.parse_args(planning.with_config_files(argv, args.config))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "hook":
            return cmd_hook(args)
        if args.command == "plan":
            return planning.run(args)
        if args.command == "undeploy":
            return cmd_undeploy(args)
        if args.command == "doctor":
            return cmd_doctor(args)
        if args.command == "dane":
            return cmd_dane(args)
    except errors.Error as exc:
        print(f"UNKNOWN: {exc}", file=sys.stderr)
        return findings.EXIT_CODES["UNKNOWN"]
    return findings.EXIT_CODES["UNKNOWN"]
