"""Traces: readers, transforms, synthetic generators and prompt synthesis, all over one ``Trace`` form."""

from harness.traces.arrivals import ArrivalProcess, Constant, Gamma, Poisson
from harness.traces.distributions import Empirical, Fixed, LengthDistribution, TruncatedLogNormal, Uniform
from harness.traces.frame import DEFAULT_BLOCK_TOKENS, Trace, offsets_from_lists
from harness.traces.native import write_native
from harness.traces.readers import FORMATS, detect_format, read_trace, read_trace_report
from harness.traces.rows import ReadReport
from harness.traces.stats import TraceStats, prefix_reuse, trace_stats
from harness.traces.synth import Sessions, SynthSpec, SystemPrompts, synthesize
from harness.traces.transforms import clip_lengths, mean_rate, rescale_rate, sample, speedup, window

__all__ = ["DEFAULT_BLOCK_TOKENS", "Trace", "offsets_from_lists"]
__all__ += ["Empirical", "Fixed", "LengthDistribution", "TruncatedLogNormal", "Uniform"]
__all__ += ["FORMATS", "ReadReport", "detect_format", "read_trace", "read_trace_report", "write_native"]
__all__ += ["clip_lengths", "mean_rate", "rescale_rate", "sample", "speedup", "window"]
__all__ += [
    "ArrivalProcess",
    "Constant",
    "Gamma",
    "Poisson",
    "Sessions",
    "SynthSpec",
    "SystemPrompts",
    "synthesize",
]
__all__ += ["TraceStats", "prefix_reuse", "trace_stats"]
