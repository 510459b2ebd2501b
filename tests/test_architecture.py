"""The package's shape: no import cycles, and the CLI layer is the only one that imports the CLI."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import invismap

ROOT = Path(invismap.__file__).parent


def module_name(path: Path) -> str:
    parts = ["invismap", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the invismap modules it imports, anywhere in its file (a lazy import inside a function
    still ties the two modules together)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("invismap"):
                for alias in node.names:  # "from invismap.detector import zoo" names a module too
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycles():
    graph = imports()
    assert len(graph) > 50  # the walk found the package
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_a_cycle_is_caught():
    """The check itself: a two-module cycle is reported."""
    try:
        tuple(graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("graphlib did not report a cycle")


def test_only_the_command_line_imports_the_command_line():
    cli = {m for m in imports() if m.rsplit(".", 1)[-1] in ("cli", "__main__") or m.endswith("assets_cli")}
    offenders = {m: sorted(deps & cli) for m, deps in imports().items() if m not in cli and deps & cli}
    assert not offenders, offenders


def test_every_help_page_renders(capsys):
    """``invismap --help`` and each subcommand's ``--help`` print (argparse %-formats every help string)."""
    import pytest

    from invismap.cli import build_parser

    parser = build_parser()
    commands = list(parser._subparsers._group_actions[0].choices)  # argparse has no public API for this
    assert len(commands) > 10
    for argv in [["--help"], *([c, "--help"] for c in commands)]:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 0, argv
    assert "eval-invisibility" in capsys.readouterr().out
