"""Traces: readers, transforms, synthetic generators and prompt synthesis, all over one ``Trace`` form."""

from harness.traces.distributions import Empirical, Fixed, LengthDistribution, TruncatedLogNormal, Uniform
from harness.traces.frame import DEFAULT_BLOCK_TOKENS, Trace, offsets_from_lists

__all__ = ["DEFAULT_BLOCK_TOKENS", "Trace", "offsets_from_lists"]
__all__ += ["Empirical", "Fixed", "LengthDistribution", "TruncatedLogNormal", "Uniform"]
