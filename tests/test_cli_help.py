"""`--help` is complete and matches the README: every option says what it does, every command is listed
at the top and in the README's command table, and the README names no command that does not exist."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner
from conftest import REPO

from harness.cli import main


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, cmd in group.commands.items():
        found.append(((*path, name), cmd))
        if isinstance(cmd, click.Group):
            found += _commands(cmd, (*path, name))
    return found


ALL = _commands(main)


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=[" ".join(p) for p, _ in ALL])
def test_every_option_and_command_explains_itself(path, cmd):
    assert cmd.help or cmd.short_help, f"{' '.join(path)} has no help"
    silent = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert silent == [], f"prfaas-bench {' '.join(path)}: options without help: {silent}"
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="prfaas-bench")
    assert result.exit_code == 0 and "Usage: prfaas-bench" in result.output


def test_the_top_level_help_and_the_readme_list_the_same_commands():
    top = CliRunner().invoke(main, ["--help"]).output
    listed = re.findall(r"^  ([a-z][a-z-]+)\s{2,}", top.split("Commands:")[1], re.M)
    assert sorted(listed) == sorted(main.commands)
    readme = (REPO / "README.md").read_text()
    in_table = set(re.findall(r"^\| `prfaas-bench ([a-z][a-z-]+)", readme, re.M))
    assert in_table == set(main.commands), (
        f"README's command table lacks {sorted(set(main.commands) - in_table)}, "
        f"names unknown {sorted(in_table - set(main.commands))}"
    )
    # Every `prfaas-bench X` the README mentions anywhere is a command.
    mentioned = set(re.findall(r"prfaas-bench ([a-z][a-z-]+)", readme))
    assert mentioned <= set(main.commands), sorted(mentioned - set(main.commands))
