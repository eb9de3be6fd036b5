"""A lineage's archive versions: which one live/ points at, which one is served."""

from __future__ import annotations

import os
import re
from typing import Optional

from cryptography import x509

from certbot_postfix_tls._internal import certs
from certbot_postfix_tls._internal.state import DeployedLineage

_VERSION = re.compile(r"^fullchain(\d+)\.pem$")


def lineage_of(config_dir: str, deployed: DeployedLineage) -> certs.Lineage:
    """The certbot lineage a deployed lineage's recorded paths name."""
    return certs.Lineage.from_paths(deployed.name, deployed.key_path, deployed.fullchain_path,
                                    config_dir)


def _archive_dir(lineage: certs.Lineage) -> Optional[str]:
    if not lineage.in_live:
        return None
    return os.path.dirname(os.path.realpath(lineage.fullchain_path))


def live_version(lineage: certs.Lineage) -> Optional[int]:
    """The archive version live/ points at now."""
    match = _VERSION.match(os.path.basename(os.path.realpath(lineage.fullchain_path)))
    return int(match.group(1)) if match and lineage.in_live else None


def versions(lineage: certs.Lineage) -> list[int]:
    """The archive versions present, newest first."""
    directory = _archive_dir(lineage)
    if directory is None or not os.path.isdir(directory):
        return []
    found = [_VERSION.match(entry) for entry in os.listdir(directory)]
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def version_paths(lineage: certs.Lineage, version: int) -> tuple[str, str]:
    """(privkeyN.pem, fullchainN.pem) of an archive version."""
    directory = _archive_dir(lineage) or os.path.dirname(lineage.fullchain_path)
    return (os.path.join(directory, f"privkey{version}.pem"),
            os.path.join(directory, f"fullchain{version}.pem"))


def load_version(lineage: certs.Lineage, version: int) -> certs.Material:
    """Key and full chain of one archive version, checked like the live ones."""
    key, fullchain = version_paths(lineage, version)
    return certs.load_material(certs.Lineage(lineage.name, key, fullchain, lineage.config_dir,
                                             False))


def chain_of(path: str) -> list[x509.Certificate]:
    """The certificates of a PEM file."""
    with open(path, "rb") as handle:
        return certs.load_pem_chain(handle.read())


def served_chain(config_dir: str, deployed: DeployedLineage) -> list[x509.Certificate]:
    """The chain Postfix serves for a lineage (the held version while held); certificates
    only, no key."""
    lineage = lineage_of(config_dir, deployed)
    if deployed.held:
        return chain_of(version_paths(lineage, int(deployed.held["version"]))[1])
    return chain_of(os.path.realpath(lineage.fullchain_path))
