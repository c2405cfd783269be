"""The root command's table (cli/app.py COMMANDS) against the commands themselves.

`localserve --help` lists the commands from that table without importing them, so
these tests are what keeps it true: every command a module defines is in the table
under its module, with its own help's first paragraph, and nothing else is.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import typer.main

import localserve.cli
from localserve.cli.app import COMMANDS, app


def defined_commands() -> dict[str, tuple[str, str]]:
    """name -> (module, first paragraph of help) for every command in localserve.cli."""
    found: dict[str, tuple[str, str]] = {}
    for info in pkgutil.iter_modules(localserve.cli.__path__):
        module = importlib.import_module(f"localserve.cli.{info.name}")
        sub_app = getattr(module, "app", None)
        if not isinstance(sub_app, typer.Typer) or sub_app is app:
            continue
        for name, command in typer.main.get_group(sub_app).commands.items():
            summary = " ".join((command.help or "").split("\n\n")[0].split())
            found[name] = (info.name, summary)
    return found


def test_the_table_lists_every_command_with_its_module_and_summary() -> None:
    defined = defined_commands()
    assert sorted(COMMANDS) == sorted(defined)
    for name, entry in COMMANDS.items():
        assert (entry.module, entry.summary) == defined[name], name


def test_each_command_loads_from_the_table() -> None:
    root = typer.main.get_command(app)
    ctx = root.make_context("localserve", [], resilient_parsing=True)
    for name in COMMANDS:
        command = root.get_command(ctx, name)  # type: ignore[attr-defined]
        assert command is not None and command.name == name


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys\n"
        "from localserve.cli.app import main\n"
        "sys.argv = ['localserve', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(' '.join(m for m in sys.modules if m.startswith('localserve.cli.')), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    imported = set(result.stderr.split())
    assert "Commands:" in result.stdout and "  worker " in result.stdout
    assert imported <= {"localserve.cli.app", "localserve.cli.errors"}, imported


def test_a_mistyped_command_is_told_the_near_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "localserve", "lst"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "No such command 'lst'. Did you mean 'list'?" in result.stderr
