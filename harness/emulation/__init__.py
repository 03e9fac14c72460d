"""Emulated serving clusters over real HTTP and a real shaped link (``prfaas-bench serve``).

The serving stack of ``harness.serving`` runs here on a real (optionally sped-up) clock behind an
OpenAI-compatible aiohttp server, one process per site; KVCache bytes really cross the link between
sites over TCP.
"""
