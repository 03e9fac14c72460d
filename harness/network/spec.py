"""The network's data types, from the configuration layer: ``LinkSpec`` (one shaped direction),
``Link``, ``LinkEvent``, ``NetworkSpec`` (defined, with the ``[network]`` table, in
``harness/config/network.py`` and ``harness/config/links.py``, so parsing a scenario never imports
pyroute2), and ``parse_network`` for a table on its own (a saved state, a table rewritten by serve).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.config.base import parse
from harness.config.links import LinkSpec
from harness.config.network import DEFAULT_SUBNET, SITE_NAME, Link, LinkEvent, NetworkSpec, NetworkTable

__all__ = ["DEFAULT_SUBNET", "SITE_NAME", "Link", "LinkEvent", "LinkSpec", "NetworkSpec", "parse_network"]


def parse_network(table: Mapping[str, Any], *, source: str = "network table") -> NetworkSpec:
    """Validate a ``[network]`` table and return its spec; errors name ``source`` and the field."""
    return parse(NetworkTable, table, source=source, at=("network",)).spec()
