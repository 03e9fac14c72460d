"""Traces: readers, transforms, synthetic generators and prompt synthesis, all over one ``Trace`` form."""

from harness.traces.frame import DEFAULT_BLOCK_TOKENS, Trace, offsets_from_lists

__all__ = ["DEFAULT_BLOCK_TOKENS", "Trace", "offsets_from_lists"]
