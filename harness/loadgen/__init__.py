"""Load generator: replay a trace against OpenAI-compatible endpoints and record every request.

Public API::

    from harness.loadgen import Endpoint, LoadSpec, ReplayConfig, Timeouts, replay
    result = replay(trace, ReplayConfig(endpoints=(Endpoint(name="default", url=..., model=...),)), "out/")

Modules: ``config`` (value objects), ``schedule`` (when each request goes), ``sse`` (stream parsing and
the ``prfaas`` breakdown wire format), ``client`` (one request -> one record), ``driver`` (asyncio
dispatch), ``workers`` (processes sharing one schedule), ``shards`` and ``rayworkers`` (Ray actors across
hosts, each with a shard), ``runner`` (run directory, progress, summary).
"""

from harness.loadgen.client import ERROR_CLASSES, Client, Job
from harness.loadgen.config import APIS, ARRIVALS, Endpoint, LoadSpec, RayPlacement, ReplayConfig, Timeouts
from harness.loadgen.runner import ReplayResult, replay, replay_sweep
from harness.loadgen.schedule import Schedule, build_schedule
from harness.loadgen.sse import PRFAAS_FIELDS, PRFAAS_KEY
from harness.pdproxy import PD_PREFILL_KV_PARAMS

__all__ = [
    "APIS",
    "ARRIVALS",
    "ERROR_CLASSES",
    "PD_PREFILL_KV_PARAMS",
    "PRFAAS_FIELDS",
    "PRFAAS_KEY",
    "Client",
    "Endpoint",
    "Job",
    "LoadSpec",
    "RayPlacement",
    "ReplayConfig",
    "ReplayResult",
    "Schedule",
    "Timeouts",
    "build_schedule",
    "replay",
    "replay_sweep",
]
