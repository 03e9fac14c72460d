"""The ``prfaas-bench`` command. Each sub-command lives in its own module and only parses, calls and prints.

Errors the user can fix (``HarnessError``) are printed as one line on stderr with exit code 2;
nothing the user did wrong ends in a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from harness import __version__
from harness.errors import HarnessError


class _Root(click.Group):
    # --help lists the commands in the order of the work (then any others), not alphabetically.
    ORDER = (
        "bench",
        "plan",
        "simulate",
        "sweep",
        "serve",
        "replay",
        "calibrate",
        "analyze",
        "report",
        "compare",
        "trace",
        "net",
    )

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in self.ORDER if n in names] + [n for n in names if n not in self.ORDER]

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HarnessError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)
        except click.UsageError as exc:  # a bad flag or argument: one line too, not click's usage block
            if isinstance(exc, click.exceptions.NoArgsIsHelpError):
                raise
            path = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            click.secho(f"error: {path}: {exc.format_message()} (see --help)", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="prfaas-bench")
def main() -> None:
    """Benchmark cross-datacenter prefill/decode disaggregation (Prefill-as-a-Service, PrfaaS).

    Start with `bench SCENARIO` (plan, simulate, serve + replay, analyse, report); each stage is also a
    command of its own. `COMMAND --help` explains one.
    """


# Sub-commands, one module each defining ``command``; a missing or broken module is an ImportError at
# start, never a silently absent command.
_COMMANDS = (
    "analyze", "bench", "calibrate", "compare", "fakeserver", "net", "plan", "replay", "report", "serve",
    "simulate", "sweep", "trace",
)  # fmt: skip
for _name in _COMMANDS:
    main.add_command(importlib.import_module(f"harness.cli.{_name}").command)
