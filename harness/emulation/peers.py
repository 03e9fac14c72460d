"""The HTTP calls one site process makes to another: PD prefill legs, KV pushes, health pings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from harness.emulation.api import ApiError


class Peers:
    """One pooled client session for every peer site (opened on first use, closed with the app)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def ping(self, base_url: str) -> str:
        """ "ok", or what went wrong reaching ``base_url/health``."""
        try:
            async with self.session().get(base_url + "/health") as resp:
                return "ok" if resp.status == 200 else f"HTTP {resp.status}"
        except aiohttp.ClientError as exc:
            return f"unreachable: {exc}"

    async def prefill_leg(self, site: str, url: str, leg: Mapping[str, Any]) -> Mapping[str, Any]:
        """POST a prefill leg; the ``kv_transfer_params`` it returns. Peer errors become ``ApiError``
        with the peer's status (a 429 keeps its Retry-After); an unreachable peer is a 502."""
        try:
            async with self.session().post(url, json=leg) as resp:
                payload = await resp.json(content_type=None)
                if resp.status != 200:
                    err = payload.get("error", {}) if isinstance(payload, dict) else {}
                    retry = resp.headers.get("Retry-After")
                    raise ApiError(
                        resp.status,
                        f"prefill site {site}: {err.get('message', payload)}",
                        retry_after_s=int(retry) if retry and retry.isdigit() else None,
                    )
        except (aiohttp.ClientError, json.JSONDecodeError) as exc:
            raise ApiError(502, f"prefill site {site} unreachable: {exc}") from None
        params = payload.get("kv_transfer_params") if isinstance(payload, dict) else None
        if not isinstance(params, dict):
            raise ApiError(502, f"prefill site {site} returned no kv_transfer_params")
        return params

    async def kv_push(self, site: str, url: str, push: Mapping[str, Any]) -> None:
        """Ask ``site`` to push KV bytes (``{"transfer_id", "nbytes", "dst_site"}``) and wait until sent."""
        try:
            async with self.session().post(url, json=push) as resp:
                if resp.status != 200:
                    raise ApiError(502, f"prefix holder {site}: HTTP {resp.status} {await resp.text()}")
        except aiohttp.ClientError as exc:
            raise ApiError(502, f"prefix holder {site} unreachable: {exc}") from None
