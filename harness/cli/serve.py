"""``prfaas-bench serve SCENARIO``: emulated clusters over real HTTP on a shaped inter-site link."""

from __future__ import annotations

import json
import time

import click

from harness.cli._options import context_options, context_policy, parse_names, prefix_option, warn
from harness.emulation.clusters import DEFAULT_PREFIX, EmulatedClusters
from harness.errors import ScenarioError
from harness.lifeline import exit_on_signals

_ZERO = {"first-request": "the first request", "ready": "now (serve is ready)"}


@click.command("serve")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--speedup", type=float, help="Time speed-up s (default: [emulation] speedup, else 1).")
@click.option(
    "--netns/--no-netns",
    default=None,
    help="Sites in network namespaces on a shaped link (default when root), or loopback ports.",
)
@click.option(
    "--port-base", type=int, help="Host ports: local site PORT, remote PORT+1 (default: free ports)."
)
@click.option("--topology", "topologies", help="Comma-separated topologies to serve (default: all).")
@click.option(
    "--kv-rate-mbit", type=float, help="Emulated inter-site rate (default: [emulation] kv_rate_mbit)."
)
@click.option("--connections", type=int, help="TCP connections per site pair for KV.")
@prefix_option(DEFAULT_PREFIX, "the sites' namespaces, links and relays")
@click.option(
    "--events-from",
    type=click.Choice(["first-request", "ready"]),
    default="first-request",
    show_default=True,
    help="Zero of the run clock [[network.events]] count from: the first request, or serve being ready.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as one JSON object.")
@context_options
def command(
    scenario,
    speedup,
    netns,
    port_base,
    topologies,
    kv_rate_mbit,
    connections,
    prefix,
    events_from,
    as_json,
    clip,
    drop,
) -> None:
    """Bring up one process per site, print the endpoint URLs, and serve until Ctrl-C.

    Each topology's router (vLLM PD-proxy protocol, OpenAI API) is at http://127.0.0.1:PORT/<topology>/v1.
    Ctrl-C or SIGTERM stops every process and removes the namespaces.
    """
    if port_base is not None and not 1024 <= port_base <= 65000:
        raise ScenarioError(f"--port-base must be in 1024..65000, got {port_base}")
    names = parse_names(topologies)
    clusters = EmulatedClusters(  # validates the scenario and the flags; starts nothing yet
        scenario,
        topologies=names,
        speedup=speedup,
        netns=netns,
        port_base=port_base,
        kv_rate_mbit=kv_rate_mbit,
        connections=connections,
        prefix=prefix,
        events_from=events_from,
        context=context_policy(clip, drop),  # a trace workload's over-long rows, as in plan and simulate
    )
    warn(clusters.scenario.warnings("serve", speedup=clusters.spec.speedup))
    # Forked helpers (pyroute2's) get the default action back, so only serve itself unwinds.
    with exit_on_signals(), clusters:
        warn(clusters.warnings)
        info = clusters.describe()
        if as_json:
            click.echo(json.dumps(info, default=str))
        else:
            label = "" if info["backend"] != "loopback" else "  (fallback: no namespaces, app-level shaping)"
            click.echo(f"model {clusters.model}   backend {info['backend']}{label}")
            click.echo(
                f"speed-up {clusters.spec.speedup:g}x   link {clusters.rate_mbit:g} Mbit/s, "
                f"{clusters.delay_ms:g} ms one way   KV byte scale {clusters.byte_scale:.3g}"
            )
            for topo, url in clusters.urls.items():
                click.echo(f"  {topo:<12} {url}")
            if info["link_events_from"]:
                click.echo(
                    "[[network.events]]: applied at their model times / "
                    f"{clusters.spec.speedup:g} after {_ZERO[info['link_events_from']]}"
                )
            sites = "  ".join(f"{site} {url}/metrics" for site, url in clusters.host_urls.items())
            click.echo(f"metrics: {sites}   (Ctrl-C to stop)")
        while True:
            time.sleep(0.5)
            clusters.check()
