"""permissions without the lab: what is refused before anything is created."""

from __future__ import annotations

import pytest
from certbot import errors

from certbot_postfix_tls._internal import permissions


@pytest.mark.parametrize("bad", ["", "-r", "--help", "a b", "../x", "x/y", "1234", "x" * 40])
def test_ensure_group_rejects_odd_names(bad: str) -> None:
    with pytest.raises(errors.PluginError, match="not a plain group name"):
        permissions.ensure_group(bad)
