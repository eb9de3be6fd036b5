"""Where Postfix listens, and which of its listeners a deploy verifies.

Every inet smtpd/postscreen service of master.cf, with the addresses the master binds
it to, its TLS endpoint for the verifier, and why it is skipped (TLS off, PROXY
protocol) or only checked on request (loopback content-filter and proxy ports).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from certbot import errors

from certbot_postfix_tls._internal import constants
from certbot_postfix_tls._internal.daemons.postfix.config import (
    ADVICE,
    NAME,
    MasterService,
    PostfixConfig,
    effective_smtpd_level,
    is_yes,
    main_cf_path,
    resolve_port,
    service_setting,
    setting_source,
    split_list,
)
from certbot_postfix_tls._internal.verify import (
    LOOPBACKS,
    WILDCARDS,
    Endpoint,
    choose_address,
    ip_version,
    is_loopback,
)


def inet_families(config: PostfixConfig) -> list[int]:
    """The IP versions Postfix listens with (inet_protocols: all, ipv4, ipv6, lists)."""
    value = config.value("inet_protocols").lower() or "all"
    families: list[int] = []
    for item in split_list(value):
        if item == "all":
            families += [4, 6] if socket.has_ipv6 else [4]
        elif item in ("ipv4", "ipv6"):
            families.append(int(item[-1]))
    return sorted(set(families)) or [4]


def _resolve(name: str, families: Sequence[int]) -> list[str]:
    """A host name's addresses of the given families (Postfix binds to each of them)."""
    found: list[str] = []
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return found
    for family, _, _, _, sockaddr in infos:
        version = 4 if family == socket.AF_INET else 6 if family == socket.AF_INET6 else 0
        address = str(sockaddr[0])
        if version in families and address not in found:
            found.append(address)
    return found


def bound_addresses(config: PostfixConfig, service: MasterService) -> list[str]:
    """What a master.cf inet service accepts connections on, as the master binds it:
    its own ``host:`` (``127.0.0.1:10025``, ``[::1]:25``) or every inet_interfaces value
    (``all``, ``loopback-only``, addresses, names, $names expanded), filtered by
    inet_protocols. Wildcards are ``0.0.0.0`` and ``::`` (Postfix binds IPv6 sockets
    IPv6-only, so ``::`` does not accept IPv4)."""
    families = inet_families(config)
    items = [service.host] if service.host else split_list(config.value("inet_interfaces") or "all")
    result: list[str] = []
    for item in items:
        item = item.strip("[]")
        lowered = item.lower()
        if lowered in ("all", "*", ""):
            addresses = [WILDCARDS[f] for f in families]
        elif lowered in ("loopback-only", "localhost"):
            addresses = [LOOPBACKS[f] for f in families]
        elif ip_version(item) is not None:
            addresses = [item] if ip_version(item) in families else []
        else:
            addresses = _resolve(item, families)
        result += [a for a in addresses if a not in result]
    return result


def _cert_setting(config: PostfixConfig, service: MasterService) -> str:
    """The setting that decides which certificate ``service`` serves."""
    for name in ("smtpd_tls_chain_files", "smtpd_tls_cert_file"):
        if service.overrides.get(name, "").strip():
            return f"-o {name} of master.cf service {service.key}"
    main_cf = main_cf_path(config)
    if config.version >= (3, 4):
        sni = " and tls_server_sni_maps" if config.main.get("tls_server_sni_maps") else ""
        return f"smtpd_tls_chain_files{sni} in {main_cf}"
    return f"smtpd_tls_cert_file/smtpd_tls_key_file in {main_cf}"


@dataclass(frozen=True)
class Listener:
    """One inet smtpd/postscreen service: its endpoint and whether the deploy checks it.

    ``skip`` says why it is never checked (TLS off, PROXY protocol: nothing a TLS
    client can talk to); ``internal`` why it is not checked unless its port is named
    in --postfix-tls-verify-ports (a loopback-only content-filter or proxy port).
    """

    service: MasterService
    endpoint: Endpoint
    skip: Optional[str] = None
    internal: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.service.name}/inet (port {self.endpoint.port})"


def _internal_reason(service: MasterService, port: int) -> Optional[str]:
    host = service.host
    if host is None or port in constants.PUBLIC_SMTP_PORTS or not is_loopback(host):
        return None
    if "content_filter" in service.overrides:
        use = "a content filter's re-injection port (-o content_filter=)"
    else:
        use = "an internal port (content-filter re-injection or proxy)"
    return (f"bound to loopback {service.name}, {use}; name the port in "
            "--postfix-tls-verify-ports to check it")


def listeners(config: PostfixConfig, verify_address: str) -> list[Listener]:
    """Every inet smtpd/postscreen service, with its endpoint and why it is not checked."""
    result: list[Listener] = []
    log_file = config.value("maillog_file")
    for service in config.services:
        port = service.port
        if service.type != "inet" or not service.runs_smtpd or port is None:
            continue
        overrides = service.overrides
        level = overrides.get("smtpd_tls_security_level") or effective_smtpd_level(config.main)
        wrapper = is_yes(service_setting(config, service, "smtpd_tls_wrappermode") or "no")
        address = choose_address(bound_addresses(config, service), verify_address)
        endpoint = Endpoint(
            service=NAME,
            advice=ADVICE,
            protocol="smtp",
            address=address,
            port=port,
            tls="implicit" if wrapper else "starttls",
            label=service.name,
            setting=_cert_setting(config, service),
            log_file=log_file,
            server_order=is_yes(service_setting(config, service, "tls_preempt_cipherlist")
                                or "no"),
        )
        skip: Optional[str] = None
        proxy = ("postscreen_upstream_proxy_protocol"
                 if service.command.split("/")[-1] == "postscreen"
                 else "smtpd_upstream_proxy_protocol")
        if service_setting(config, service, proxy).strip():
            skip = (f"expects a PROXY protocol header first "
                    f"({setting_source(config, service, proxy)}), which the check cannot send")
        elif level.strip().lower() == "none" and not wrapper:
            skip = f"TLS is off ({setting_source(config, service, 'smtpd_tls_security_level')})"
        internal = None if skip else _internal_reason(service, port)
        result.append(Listener(service, endpoint, skip, internal))
    return result


def endpoints(
    config: PostfixConfig, verify_address: str, ports: Optional[Sequence[int]] = None
) -> list[Endpoint]:
    """The TLS endpoints a deploy verifies: public-facing inet smtpd/postscreen services
    with TLS on; with ``ports`` (--postfix-tls-verify-ports), every one on those ports
    that a TLS client can talk to."""
    return [
        listener.endpoint
        for listener in listeners(config, verify_address)
        if listener.skip is None
        and (listener.internal is None if not ports else listener.endpoint.port in ports)
    ]


def unchecked_endpoints(
    config: PostfixConfig, ports: Optional[Sequence[int]] = None,
    verify_address: str = constants.CLI_DEFAULTS["verify_address"],
) -> list[tuple[str, str]]:
    """(label, why) of every inet smtpd/postscreen service a deploy does not verify."""
    result: list[tuple[str, str]] = []
    for listener in listeners(config, verify_address):
        port = listener.endpoint.port
        if listener.skip is not None:
            result.append((listener.label, listener.skip))
        elif ports and port not in ports:
            result.append((listener.label, "its port is not in --postfix-tls-verify-ports"))
        elif not ports and listener.internal is not None:
            result.append((listener.label, listener.internal))
    return result


def parse_ports(value: str) -> list[int]:
    """--postfix-tls-verify-ports: ``auto`` (or empty) -> [], else a comma list of ports."""
    text = value.strip().lower()
    if text in ("", "auto"):
        return []
    ports: list[int] = []
    for item in split_list(text):
        port = resolve_port(item)
        if port is None or not 0 < port < 65536:
            raise errors.PluginError(
                f"--postfix-tls-verify-ports {value}: {item!r} is not a port; give a comma "
                "list such as 25,465,587 (or auto)."
            )
        if port not in ports:
            ports.append(port)
    return ports

