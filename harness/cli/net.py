"""``prfaas-bench net …``: build, inspect, measure and remove the emulated inter-site network."""

from __future__ import annotations

import signal
import sys
import time

import click

from harness.cli._options import prefix_option, warn
from harness.errors import CapabilityError, ScenarioError
from harness.scenario import load_scenario

_prefix_option = prefix_option("pfb-", "every object (namespaces <prefix><site>); one network per prefix")


@click.group("net")
def command() -> None:
    """Inter-site network emulation: sites are namespaces, links shaped veth pairs (needs root)."""


@command.command("probe")
def probe_cmd() -> None:
    """Which shaping backends work on this machine, and why the others do not."""
    from harness.network import probe

    report = probe()
    for c in report.checks:
        mark = "yes" if c.works else "no "
        click.echo(f"{c.name:<10} {mark}  {c.reason}")
    click.echo(f"chosen: {report.chosen}")


def _split_link(text: str) -> tuple[str, str]:
    src, sep, dst = text.partition("->")
    if not sep:
        raise ScenarioError(f"--link {text!r} must look like SRC->DST")
    return src.strip(), dst.strip()


@command.command("up")
@click.argument("scenario", type=click.Path(dir_okay=False))
@_prefix_option
@click.option("--backend", type=click.Choice(["netem", "relay", "app-delay"]), help="Override the probe.")
@click.option("--dry-run", is_flag=True, help="Print the equivalent tc commands; change nothing.")
@click.option(
    "--interface", help="Shape this real host interface (egress toward --to) instead of namespaces."
)
@click.option("--to", "to_subnet", help="With --interface: destination subnet to shape, e.g. 10.1.0.0/16.")
@click.option("--link", "link_dir", help="With --interface: which direction's spec to use, SRC->DST.")
@click.option(
    "--hold", is_flag=True, help="Stay in the foreground, run [[network.events]], tear down on exit."
)
def up_cmd(scenario, prefix, backend, dry_run, interface, to_subnet, link_dir, hold) -> None:
    """Build the scenario's [network] (left up for later commands unless --hold)."""
    from harness.network import Network, render_egress
    from harness.network.host import interface_ops, record_interface, shape_interface

    net = Network.from_scenario(scenario, prefix=prefix, backend=backend)
    if interface:
        if not (to_subnet and link_dir):
            raise ScenarioError("--interface needs --to SUBNET and --link SRC->DST")
        src, dst = _split_link(link_dir)
        ops = interface_ops(net.link_spec(src, dst), to_subnet)
        if dry_run:
            for op in ops:
                click.echo(op.tc_command(interface))
            return
        shape_interface(interface, ops)
        record_interface(prefix, interface, "netem", net.table)
        click.echo(f"shaped {interface} toward {to_subnet} as {src}->{dst}: {net.link_spec(src, dst)}")
        return
    if dry_run:
        from harness.network import backend_name

        probed = backend_name()
        shown = backend or (probed if probed != "app-delay" else "netem")
        click.echo(
            f"# backend {shown}; namespaces {', '.join(net.topology.namespace(s) for s in net.spec.sites)}"
        )
        for d in net.topology.directions():
            spec = net.link_spec(d.src, d.dst)
            click.echo(f"# {d.name}: {spec}")
            for op in render_egress(spec, shown):
                click.echo(f"ip netns exec {net.topology.namespace(d.src)} {op.tc_command(d.dev)}")
            if shown == "relay" and spec.impaired:
                click.echo(
                    f"# relay on {d.tun}: delay {spec.delay_ms}ms jitter {spec.jitter_ms}ms loss {spec.loss_pct}%"
                )
        return
    if hold:
        with net.up():
            _print_up(net)
            sched = net.run_events()
            click.echo(f"holding; {len(sched.changes)} scheduled change(s); Ctrl-C or SIGTERM to tear down")
            sched.join()
            signal.pause()
        return
    t = time.monotonic()
    net.build()
    _print_up(net, time.monotonic() - t)
    warn(load_scenario(scenario).warnings("net up"))


def _print_up(net, took: float | None = None) -> None:
    extra = f" in {took:.2f} s" if took is not None else ""
    click.echo(f"{net} up{extra}")
    for site, addr in net.addresses().items():
        click.echo(f"  {site:<8} {addr:<15} netns {net.namespace(site) or '(host)'}")
    if net.backend == "app-delay":
        click.echo("  app-delay backend: no shaping; applications must add each link's delay themselves")


@command.command("status")
@_prefix_option
def status_cmd(prefix) -> None:
    """Read the kernel back and compare every direction with its spec (exit 1 on a mismatch)."""
    from harness.network import Network

    net = Network.attach(prefix)
    rows = net.status()
    click.echo(f"{net}")
    for r in rows:
        mark = "ok " if r.ok else "BAD"
        click.echo(f"  {mark} {r.direction:<16} spec {r.spec:<28} kernel {r.kernel:<22} relay {r.relay}")
        if r.offloads:
            click.echo(
                "      offloads " + ", ".join(f"{k} {'on' if v else 'off'}" for k, v in r.offloads.items())
            )
        for p in r.problems:
            click.echo(f"      {p}")
    if not all(r.ok for r in rows):
        sys.exit(1)


@command.command("down")
@_prefix_option
def down_cmd(prefix) -> None:
    """Remove every object the harness created with this prefix (relays, processes, namespaces)."""
    from harness.network import owned_namespaces, sweep

    removed = sweep(prefix)
    left = owned_namespaces(prefix)
    click.echo("removed: " + (", ".join(removed) if removed else "nothing (no network with this prefix)"))
    if left:
        raise CapabilityError(f"could not remove {left}")


@command.command("check")
@click.argument("scenario", type=click.Path(dir_okay=False), required=False)
@_prefix_option
@click.option("--seconds", type=click.FloatRange(min=0.2), default=1.5, show_default=True,
              help="Measurement time per goodput check.")  # fmt: skip
def check_cmd(scenario, prefix, seconds) -> None:
    """Measure each direction's goodput, RTT and loss against its configuration. Uses the network up
    with --prefix, or builds SCENARIO for the check and removes it afterwards. Exit 1 if out of tolerance."""
    from harness.network import Network
    from harness.network.state import State

    if State.load(prefix) is not None:
        net = Network.attach(prefix)
        rows = net.check(seconds=seconds)
    elif scenario:
        net = Network.from_scenario(scenario, prefix=prefix)
        with net.up():
            rows = net.check(seconds=seconds)
    else:
        raise ScenarioError(
            f"no network with prefix {prefix!r} is up; give a SCENARIO to build one for the check"
        )
    click.echo(
        f"{'direction':<16} {'metric':<8} {'configured':>11} {'expected':>9} {'measured':>9}  unit    tol      ok"
    )
    for m in rows:
        ok = "-" if m.ok is None else ("yes" if m.ok else "NO")
        click.echo(f"{m.direction:<16} {m.metric:<8} {m.configured:>11g} {m.expected:>9.2f} {m.measured:>9.2f}  "
                   f"{m.unit:<7} {m.tolerance:<8} {ok}")  # fmt: skip
    click.echo(f"backend: {net.backend}")
    if any(m.ok is False for m in rows):
        sys.exit(1)


@command.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("site")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@_prefix_option
def exec_cmd(site, argv, prefix) -> None:
    """Run a command inside a site's namespace: net exec SITE -- CMD ARGS..."""
    from harness.network import Network
    from harness.network.kernel import spawn_in

    net = Network.attach(prefix)
    try:
        proc = spawn_in(net.namespace(site), argv)
    except FileNotFoundError:
        raise ScenarioError(f"command not found: {argv[0]}") from None
    try:
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        sys.exit(130)
