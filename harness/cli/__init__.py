"""The ``prfaas-bench`` command. Each sub-command lives in its own module and only parses, calls and prints.

Errors the user can fix (``HarnessError``) are printed as one line on stderr with exit code 2;
nothing the user did wrong ends in a traceback.
"""

from __future__ import annotations

import sys

import click

from harness import __version__
from harness.errors import HarnessError


class _Root(click.Group):
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

    \b
    bench      the main job: plan, simulate, replay, analyse, report
    plan       analytic throughput model (the PrfaaS paper's equations), grid search, sweeps
    simulate   discrete-event simulation of the serving stack in virtual time
    serve      emulated clusters over real HTTP on a shaped inter-site link
    replay     replay a trace against OpenAI-compatible endpoints
    calibrate  fit the cost model (a hardware preset) to a live engine
    analyze    metrics and the three-way comparison; report: Plotly dashboard
    fake-server  an OpenAI-compatible server with set timings, to check a pipeline
    """


# Sub-commands (click lists them alphabetically in --help); each module defines ``command``. Plain
# imports, so a missing or broken module is an ImportError, not a silently absent command.
from harness.cli import analyze, bench, compare, fakeserver, net, plan, replay, report, serve, simulate, trace  # noqa: E402

for _mod in (analyze, bench, compare, fakeserver, net, plan, replay, report, serve, simulate, trace):
    main.add_command(_mod.command)

from harness.cli import calibrate  # noqa: E402

main.add_command(calibrate.command)
