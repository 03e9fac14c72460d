"""Option parsing shared by the sub-commands."""

from __future__ import annotations

import math
from collections.abc import Iterable

import click

from harness.errors import ScenarioError
from harness.traces.context import ContextPolicy


def warn(lines: Iterable[str]) -> None:
    """Print each line on stderr as ``warning: LINE`` (e.g. ``Scenario.warnings``)."""
    for line in lines:
        click.echo(f"warning: {line}", err=True)


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """Comma-separated positive numbers (``"1,2.5,10"``); a ScenarioError naming ``option`` otherwise."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ScenarioError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ScenarioError(f"{option}: values must be positive numbers, got {text!r}")
    return values


def parse_names(text: str | None) -> list[str] | None:
    """Comma-separated names (``"prfaas, naive,"`` -> ``["prfaas", "naive"]``); None when not given."""
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def context_options(command):
    """``--clip`` / ``--drop``: what to do with prompts beyond the model's context (default: refuse);
    see ``context_policy`` and ``harness.traces.context``. Every command that reads a trace takes them."""
    command = click.option(
        "--drop", is_flag=True, help="Leave out requests whose prompt + output exceed the model's context."
    )(command)
    return click.option(
        "--clip",
        is_flag=True,
        help="Cut prompts whose prompt + output exceed the model's context to fit (default: refuse them).",
    )(command)


def prefix_option(default: str, what: str):
    """``--prefix``: the name prefix of everything a run creates; one rule, said the same way everywhere."""
    return click.option(
        "--prefix",
        default=default,
        show_default=True,
        help=f"Name prefix of {what}: 'pfb', lowercase letters or digits, then '-', at most 12 "
        "characters (e.g. pfbb2-). A prefix is owned by one live run; give a second run on this host "
        "its own.",
    )


class FiniteFloatRange(click.FloatRange):
    """click's ``FloatRange`` that also refuses ``nan`` and ``inf``: ``nan`` compares false with every
    bound, so ``FloatRange(min=0, min_open=True)`` lets it through, and an open top lets ``inf`` in."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def api_key_env_option(command):
    """``--api-key-env VAR``: where the bearer token is read from (the key itself never reaches a file)."""
    return click.option(
        "--api-key-env",
        default="OPENAI_API_KEY",
        show_default=True,
        help="Env var holding the API key (never recorded).",
    )(command)


def time_scale_option(command):
    """``--time-scale S``: model seconds per wall second, for runs against ``serve --speedup S``."""
    return click.option(
        "--time-scale",
        type=FiniteFloatRange(min=0, min_open=True),
        default=1.0,
        show_default=True,
        help="Against `serve --speedup S`, give S: times are read S times longer (the modelled "
        "deployment's seconds).",
    )(command)


def context_policy(clip: bool, drop: bool) -> ContextPolicy:
    """The policy ``--clip`` / ``--drop`` choose (``refuse`` without either)."""
    if clip and drop:
        raise ScenarioError("give --clip or --drop, not both")
    return "clip" if clip else "drop" if drop else "refuse"
