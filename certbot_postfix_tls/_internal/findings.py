"""One finding type for everything that judges: doctor, verify, dane and metrics.

A finding is a name, a status and one sentence (what is wrong, where, the fix).
Statuses follow the monitoring-plugin convention; ``worst`` ranks them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

OK = "OK"
WARNING = "WARNING"
CRITICAL = "CRITICAL"
UNKNOWN = "UNKNOWN"

EXIT_CODES: dict[str, int] = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
# CRITICAL outranks UNKNOWN: a known failure (say, a pending reload) must not be
# hidden by a check that could not run.
SEVERITY = (OK, WARNING, UNKNOWN, CRITICAL)


@dataclass
class Finding:
    """One finding: name, status (OK, WARNING, CRITICAL, UNKNOWN) and one sentence."""

    name: str
    status: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


def worst(statuses: Iterable[str]) -> str:
    """The most severe status (OK < WARNING < UNKNOWN < CRITICAL); OK when empty."""
    return max(statuses, key=SEVERITY.index, default=OK)
