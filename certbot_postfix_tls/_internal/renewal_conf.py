"""certbot's renewal configuration of a lineage (``<config-dir>/renewal/NAME.conf``),
read leniently: whatever sections and keys a certbot version writes (certbot 5.x adds
``[acme_renewal_info]`` and ``preferred_profile``/``required_profile``) are read without
complaint, and a file that cannot be parsed is treated as absent."""

from __future__ import annotations

import configparser
import glob
import os
from typing import Optional

__all__ = ["RenewalConf", "all_confs", "read"]

_TOP = "top"  # the keys before the first section (cert, privkey, version, ...)


class RenewalConf:
    """One renewal configuration: its top-level keys and its sections."""

    def __init__(self, path: str, sections: dict[str, dict[str, str]]) -> None:
        self.path = path
        self.sections = sections

    @property
    def name(self) -> str:
        return os.path.basename(self.path)[: -len(".conf")]

    def get(self, key: str, section: str = _TOP) -> Optional[str]:
        value = self.sections.get(section, {}).get(key)
        return _unquote(value) if value is not None else None

    def renewal(self, key: str) -> Optional[str]:
        """A ``[renewalparams]`` value (certbot's options for the next renewal)."""
        return self.get(key, "renewalparams")

    @property
    def profile(self) -> Optional[str]:
        """The ACME profile certbot asks for: required_profile, else preferred_profile."""
        for key in ("required_profile", "preferred_profile"):
            value = self.renewal(key)
            if value and value.lower() != "none":
                return value
        return None


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def read(path: str) -> Optional[RenewalConf]:
    """The configuration in ``path``; None when it is missing or unreadable."""
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       default_section="\0none")
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_string(f"[{_TOP}]\n" + handle.read())
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    return RenewalConf(path, {name: dict(parser[name]) for name in parser.sections()})


def all_confs(config_dir: str) -> list[RenewalConf]:
    """Every readable renewal configuration under ``config_dir``, by lineage name."""
    found = (read(path) for path in sorted(glob.glob(os.path.join(config_dir, "renewal",
                                                                  "*.conf"))))
    return [conf for conf in found if conf is not None]
