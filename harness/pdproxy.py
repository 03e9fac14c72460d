"""vLLM's PD-proxy protocol, the part both sides of it share: how a prefill leg is built.

The proxy (``replay --prefill-url/--decode-url``, or ``serve``'s router) sends the client's request to
the prefill server as a non-streamed, one-token request whose ``kv_transfer_params`` ask it to keep
the KV for a remote decode; the prefill server answers with the params the decode leg then carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What vLLM's proxy puts in the prefill leg's kv_transfer_params.
PD_PREFILL_KV_PARAMS: Mapping[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}

# The client's warning on a PD request whose prefill leg returned no kv_transfer_params: the prefill
# server has no KV connector, so the decode server computed the prompt again and no KV moved.
NO_KV_TRANSFER = "pd_no_kv_transfer_params"

# Options that only make sense for the decode leg (streaming, a floor on output tokens).
_DECODE_ONLY = ("stream_options", "min_tokens", "min_completion_tokens")


def prefill_leg_body(body: Mapping[str, Any], **kv_params: Any) -> dict[str, Any]:
    """The prefill leg for a client's request ``body``: not streamed, ``max_tokens`` 1, no decode-only
    options, ``kv_transfer_params`` asking for a remote decode (plus ``kv_params``, e.g. a transfer id)."""
    leg = {k: v for k, v in body.items() if k not in _DECODE_ONLY}
    leg.update(stream=False, max_tokens=1, kv_transfer_params={**PD_PREFILL_KV_PARAMS, **kv_params})
    if "max_completion_tokens" in leg:
        leg["max_completion_tokens"] = 1
    return leg
