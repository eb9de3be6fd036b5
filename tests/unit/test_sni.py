"""The default-certificate rule and the SNI table, as pure functions of the state."""

from __future__ import annotations

import os
import random
from pathlib import Path

from certbot_postfix_tls._internal import sni
from certbot_postfix_tls._internal.daemons.dovecot import plan as dovecot_plan
from certbot_postfix_tls._internal.state import DeployedLineage, State


def lineage(name: str, *names: str) -> DeployedLineage:
    return DeployedLineage(name, f"/l/{name}/privkey.pem", f"/l/{name}/fullchain.pem",
                           f"/p/{name}/key-fullchain.pem", list(names or (name,)))


def state_of(*lineages: DeployedLineage, pin: str | None = None) -> State:
    state = State()
    for item in lineages:
        state.add(item, pin=item.name == pin)
    state.default = sni.choose_default(state, "mx.example.net")
    return state


def test_default_is_myhostnames_lineage_whatever_the_order() -> None:
    a = lineage("a", "mail.a.example")
    host = lineage("host", "mx.example.net", "smtp.example.net")
    b = lineage("b", "mail.b.example")
    for order in ([a, host, b], [b, a, host], [host, b, a]):
        assert state_of(*order).default == "host"


def test_default_falls_back_to_first_deployed_and_pin_wins() -> None:
    a, b = lineage("a", "mail.a.example"), lineage("b", "mail.b.example")
    assert state_of(a, b).default == "a"
    assert state_of(b, a).default == "b"
    host = lineage("host", "mx.example.net")
    assert state_of(host, a, pin="a").default == "a"


def test_removing_the_default_picks_the_next() -> None:
    state = state_of(lineage("a", "mail.a.example"), lineage("host", "mx.example.net"))
    state.remove("host")
    assert sni.choose_default(state, "mx.example.net") == "a"


def test_map_is_order_independent_and_handles_wildcards() -> None:
    items = [lineage("a", "mail.a.example", "*.a.example"),
             lineage("host", "mx.example.net", "mail.a.example"),
             lineage("c", "MAIL.C.example")]
    tables = set()
    for _ in range(5):
        random.shuffle(items)
        tables.add(sni.render_map(state_of(*items)))
    assert len(tables) == 1
    table = tables.pop()
    assert ".a.example /p/a/key-fullchain.pem\n" in table  # *.a.example as Postfix wants it
    assert "mail.c.example /p/c/key-fullchain.pem\n" in table  # lower case
    # A name two lineages share goes to the default lineage.
    assert "mail.a.example /p/host/key-fullchain.pem\n" in table


def test_dovecot_local_names_skip_the_default() -> None:
    state = state_of(lineage("a", "mail.a.example"), lineage("host", "mx.example.net"))
    entries = dovecot_plan.sni_entries(state)
    assert [names for names, _ in entries] == [["mail.a.example"]]
    assert entries[0][1].fullchain == "/l/a/fullchain.pem"


def test_map_type_prefers_postfix_default() -> None:
    assert sni.map_type({"hash", "lmdb"}, "lmdb") == "lmdb"
    assert sni.map_type({"hash", "btree"}, "hash") == "hash"
    assert sni.map_type({"lmdb"}, "hash") == "lmdb"


def test_index_is_current_only_when_newer_than_the_table_and_its_files(tmp_path: Path) -> None:
    chain = tmp_path / "key-fullchain.pem"
    chain.write_text("x\n")
    table = tmp_path / "sni-map"
    table.write_text(f"# comment\nmail.example.org {chain}\n")
    index = tmp_path / "sni-map.db"
    assert not sni.index_current(str(table), "hash")
    index.write_text("")
    os.utime(chain, ns=(1_000, 1_000))
    os.utime(table, ns=(2_000, 2_000))
    os.utime(index, ns=(3_000, 3_000))
    assert sni.index_current(str(table), "hash")
    # A key+chain file written after the index (a run killed before postmap): stale.
    os.utime(chain, ns=(4_000, 4_000))
    assert not sni.index_current(str(table), "hash")
