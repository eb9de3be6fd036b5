"""No runtime module outside daemons/ branches on a daemon's name.

What differs between Postfix and Dovecot lives behind ``daemons.base.Daemon`` and its
``Advice`` (reload and start commands, log programs, the name people read). A module
that needs one daemon's configuration compares with that daemon class's ``name`` or
tests the type, never a string literal, so that renaming or adding a daemon cannot
leave a forgotten ``== "postfix"`` behind. The layering itself (no module imports one
above it, no import cycles) is import-linter's, in setup.cfg.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import certbot_postfix_tls._internal as runtime
from certbot_postfix_tls._internal import daemons

RUNTIME = Path(runtime.__file__).resolve().parent
DAEMONS = RUNTIME / "daemons"
DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"
PACKAGE = "certbot_postfix_tls._internal"
# (module, name) where a literal daemon name is data, not a branch: a key such as an
# entry of the state's pending list, when no Daemon class can be named there. Branches
# are never allowed. Empty: today every such key is spelled ``Postfix.name``.
ALLOWED: set[tuple[str, str]] = set()
_AFFIXES = ("startswith", "endswith")


def _literals(node: ast.AST) -> Iterator[ast.Constant]:
    """The string constants of an operand, or of a literal tuple/list/set operand."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for element in node.elts:
            yield from _literals(element)


def _operands(node: ast.AST) -> list[ast.AST]:
    """What ``node`` tests a value against, when it is a branch: both sides of a
    comparison (``==``, ``in``), a ``match`` case, a ``startswith`` argument, the keys
    of a lookup table, a literal list iterated over."""
    if isinstance(node, ast.Compare):
        return [node.left, *node.comparators]
    if isinstance(node, ast.MatchValue):
        return [node.value]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in _AFFIXES:
        return list(node.args)
    if isinstance(node, ast.Dict):
        return [key for key in node.keys if key is not None]
    if isinstance(node, (ast.For, ast.comprehension)):
        return [node.iter]
    return []


def name_literals(source: str, names: set[str]) -> tuple[list[tuple[int, str]],
                                                         list[tuple[int, str]]]:
    """(branches, other uses): (line, name) of every string literal in ``source`` that
    is a daemon's name, those a branch tests against first."""
    tree = ast.parse(source)
    branch_nodes = {id(constant) for node in ast.walk(tree) for operand in _operands(node)
                    for constant in _literals(operand)}
    branches, data = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value in names:
            (branches if id(node) in branch_nodes else data).add((node.lineno, node.value))
    return sorted(branches), sorted(data)


def test_the_check_sees_every_kind_of_branch() -> None:
    names = {"postfix", "dovecot"}
    source = ("if service == 'postfix': pass\n"
              "ok = kind in ('dovecot', 'none')\n"
              "match service:\n    case 'dovecot': pass\n"
              "unit.startswith('postfix')\n"
              "RELOADS = {'postfix': 'postfix reload'}\n"
              "both = [d for d in ('postfix',)]\n"
              "for d in ['dovecot']: pass\n"
              "fine = service == Postfix.name and 'postfix reload' in text\n"
              "state.pending.append('postfix')\n")
    assert name_literals(source, names) == (
        [(1, "postfix"), (2, "dovecot"), (4, "dovecot"), (5, "postfix"), (6, "postfix"),
         (7, "postfix"), (8, "dovecot")],
        [(10, "postfix")])


def test_no_module_outside_daemons_branches_on_a_daemon_name() -> None:
    names = set(daemons.names())
    assert names >= {"postfix", "dovecot"}
    branches, data = [], []
    for path in sorted(RUNTIME.rglob("*.py")):
        if DAEMONS in path.parents:
            continue
        module = path.relative_to(RUNTIME).as_posix()
        found, used = name_literals(path.read_text(), names)
        branches += [f"{module}:{line}: {name!r}" for line, name in found]
        data += [f"{module}:{line}: {name!r}" for line, name in used
                 if (module, name) not in ALLOWED]
    assert branches == [], ("branch on the daemon's class (Postfix.name, its Advice, the "
                            "registry) instead of its name: " + ", ".join(branches))
    assert data == [], ("name the daemon by its class (Postfix.name), or allow a data key "
                        "in ALLOWED: " + ", ".join(data))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNTIME).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(path: Path) -> bool:
    """Not an empty ``__init__.py``, nor _internal's own (it says "not a public API")."""
    if path.name != "__init__.py":
        return True
    return path.parent != RUNTIME and path.stat().st_size > 0


def _imports(path: Path) -> set[str]:
    """The runtime modules (or packages) ``path`` imports, as dotted names below
    ``_internal``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module \
                and node.module.startswith(PACKAGE):
            base = node.module[len(PACKAGE):].lstrip(".")
            found.update(f"{base}.{alias.name}".lstrip(".") for alias in node.names)
    return found


def test_the_design_module_table_lists_every_module_in_layer_order() -> None:
    """docs/design.md has one row per runtime module, and every module is listed before
    the modules it imports (so the table reads from the top of the layering down)."""
    lines = DESIGN.read_text().splitlines()
    start = lines.index("| module | concern |") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("| `"):
            break
        table.append(line.split("`")[1])
    modules = {_module_name(path): path for path in RUNTIME.rglob("*.py") if _is_module(path)}
    assert sorted(table) == sorted(modules)
    misplaced = []
    for name, path in modules.items():
        for imported in _imports(path):
            while imported and imported not in table:  # a name in a module: the module
                imported = imported.rpartition(".")[0]
            if imported and table.index(imported) <= table.index(name):
                misplaced.append(f"{name} imports {imported}")
    assert misplaced == []
