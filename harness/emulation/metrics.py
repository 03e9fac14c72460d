"""``/metrics`` of a site process: queue depths, batch sizes, KV bytes, link utilisation, cache hits.

Besides its own ``prfaas_*`` families, a site exposes vLLM's names with vLLM's meaning, one sample per
topology and site (labels ``topology``, ``site``), so replay's telemetry reads the emulator as it reads a
real vLLM: ``vllm:num_requests_running`` (prefilling plus decoding), ``vllm:num_requests_waiting``
(queued for a prefill or a decode slot), ``vllm:kv_cache_usage_perc`` (decode KVCache reserved over
capacity, 0..1, where the site decodes), ``vllm:prefix_cache_queries``/``_hits`` (prompt tokens), and
the histograms ``vllm:request_queue_time_seconds`` and ``vllm:request_prefill_time_seconds`` (as sum,
count and one ``+Inf`` bucket, in wall seconds as vLLM's: from reaching the instance's queue to the
prefill's start, and from there to its end), from which ``calibrate`` tells engine time from the rest.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from harness.emulation.prometheus import MetricFamily

if TYPE_CHECKING:
    from harness.emulation.server import SiteServer
    from harness.serving.site import Site


def collect(server: SiteServer) -> list[MetricFamily]:
    """Read the serving objects and KV endpoints of ``server`` into metric families."""
    now = asyncio.get_running_loop().time()
    m = {
        name: MetricFamily(f"prfaas_{name}", kind, text)
        for name, kind, text in (
            ("prefill_queue_depth", "gauge", "Requests waiting or running on a prefill instance"),
            (
                "prefill_backlog_seconds",
                "gauge",
                "Estimated prefill work queued on an instance (model seconds)",
            ),
            ("prefill_completed_total", "counter", "Prefills finished by an instance"),
            ("decode_batch_size", "gauge", "Sequences in a decode instance's running batch"),
            ("decode_pending", "gauge", "Sequences waiting for a decode slot or memory"),
            ("decode_kv_used_bytes", "gauge", "KVCache bytes reserved on a decode instance"),
            ("decode_steps_total", "counter", "Decode steps run by an instance"),
            ("cache_lookup_tokens_total", "counter", "Prompt tokens looked up in a site's prefix cache"),
            ("cache_hit_tokens_total", "counter", "Prompt tokens served from a site's prefix cache"),
            ("requests_waiting", "gauge", "Accepted requests not yet decoding"),
            ("requests_accepted_total", "counter", "Requests accepted"),
            ("requests_rejected_total", "counter", "Requests refused with 429"),
            ("requests_failed_total", "counter", "Requests that failed after acceptance"),
            ("requests_routed_total", "counter", "Router decisions by route"),
            ("kv_bytes_sent_total", "counter", "Emulated KV bytes sent to other sites"),
            ("kv_model_bytes_sent_total", "counter", "Modelled (unscaled) KV bytes sent to other sites"),
            ("kv_bytes_received_total", "counter", "Emulated KV bytes received from other sites"),
            (
                "kv_transfers_in_flight",
                "gauge",
                "KV transfers being sent (role=send) or received (role=recv)",
            ),
            ("link_utilisation", "gauge", "KV bytes delivered over the last second / the link's capacity"),
            ("loop_lag_seconds", "gauge", "Event-loop scheduling lag (wall seconds) over recent samples"),
        )
    }
    v = _vllm_families()
    for node in server.nodes.values():
        t = {"topology": node.name, "site": server.site}
        _add_vllm(v, node.site, t, server.spec.speedup)
        m["requests_waiting"].add(node.waiting, **t)
        m["requests_accepted_total"].add(node.accepted, **t)
        m["requests_rejected_total"].add(node.rejected, **t)
        m["requests_failed_total"].add(node.failed, **t)
        for route, count in sorted(node.cluster.routes.items()):
            m["requests_routed_total"].add(count, route=route, **t)
        site = node.site
        for p in site.prefill_instances:
            m["prefill_queue_depth"].add(p.queue_depth, instance=p.name, **t)
            m["prefill_backlog_seconds"].add(p.load_s(now), instance=p.name, **t)
            m["prefill_completed_total"].add(p.completed, instance=p.name, **t)
        for d in site.decode_instances:
            m["decode_batch_size"].add(len(d.active), instance=d.name, **t)
            m["decode_pending"].add(len(d.pending), instance=d.name, **t)
            m["decode_kv_used_bytes"].add(d.kv_used, instance=d.name, **t)
            m["decode_steps_total"].add(d.steps, instance=d.name, **t)
        if site.cache is not None:
            m["cache_lookup_tokens_total"].add(site.cache.lookup_tokens, **t)
            m["cache_hit_tokens_total"].add(site.cache.hit_tokens, **t)
        # The router's LinkViews: reading them changes nothing the router sees.
        for (src, dst), link in node.cluster.links.items():
            m["link_utilisation"].add(link.utilisation(now), src=src, dst=dst, topology=node.name)
    s = {"site": server.site}
    for q, value in server.lag.quantiles().items():
        m["loop_lag_seconds"].add(value, quantile=f"{q:g}", **s)
    m["kv_bytes_sent_total"].add(server.sender.bytes_sent, **s)
    model_bytes = sum(getattr(n.transport, "real_bytes_sent", 0) for n in server.nodes.values())
    m["kv_model_bytes_sent_total"].add(model_bytes, **s)
    m["kv_bytes_received_total"].add(server.receiver.bytes_received, **s)
    m["kv_transfers_in_flight"].add(server.sender.in_flight, role="send", **s)
    m["kv_transfers_in_flight"].add(server.receiver.in_flight, role="recv", **s)
    return list(m.values()) + list(v.values())


def _vllm_families() -> dict[str, MetricFamily]:
    return {
        name: MetricFamily(f"vllm:{name}", kind, text)
        for name, kind, text in (
            ("num_requests_running", "gauge", "Requests prefilling or decoding (vLLM's name)"),
            ("num_requests_waiting", "gauge", "Requests queued for a prefill or a decode slot (vLLM's name)"),
            ("kv_cache_usage_perc", "gauge", "Decode KVCache reserved / capacity, 1 = full (vLLM's name)"),
            ("prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache"),
            ("prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache"),
            ("request_queue_time_seconds", "histogram", "Time prefills waited in an instance's queue"),
            ("request_prefill_time_seconds", "histogram", "Time from a prefill's start to its end"),
        )
    }


def _add_vllm(v: dict[str, MetricFamily], site: Site, labels: dict[str, str], speedup: float) -> None:
    """One topology's part of a site, in vLLM's terms (its durations in wall seconds)."""
    prefills, decodes = site.prefill_instances, site.decode_instances
    done = sum(p.completed for p in prefills)
    v["request_queue_time_seconds"].add_totals(
        sum(p.queue_s_total for p in prefills) / speedup, done, **labels
    )
    v["request_prefill_time_seconds"].add_totals(
        sum(p.prefill_s_total for p in prefills) / speedup, done, **labels
    )
    running = sum(p.running for p in prefills) + sum(len(d.active) for d in decodes)
    waiting = sum(p.queue_depth - p.running for p in prefills) + sum(len(d.pending) for d in decodes)
    v["num_requests_running"].add(running, **labels)
    v["num_requests_waiting"].add(waiting, **labels)
    capacity = sum(d.kv_capacity for d in decodes)
    if capacity:
        v["kv_cache_usage_perc"].add(sum(d.kv_used for d in decodes) / capacity, **labels)
    if site.cache is not None:
        v["prefix_cache_queries_total"].add(site.cache.lookup_tokens, **labels)
        v["prefix_cache_hits_total"].add(site.cache.hit_tokens, **labels)
