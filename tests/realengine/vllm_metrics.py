"""Recompute a bench serve result file's figures with vLLM's own ``calculate_metrics``; print them.

Run with the vLLM venv's Python: ``python vllm_metrics.py RESULT.json``. The per-request arrays become
vLLM's ``RequestFuncOutput`` objects (a request succeeded when its error is empty), so the printed
figures are what vLLM itself makes of those arrays."""

import json
import sys

from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput
from vllm.benchmarks.serve import calculate_metrics

with open(sys.argv[1]) as fh:
    result = json.load(fh)
outputs = [
    RequestFuncOutput(
        success=not error,
        ttft=ttft,
        itl=itl,
        latency=latency,
        output_tokens=out,
        prompt_len=prompt,
        start_time=start,
        error=error,
    )
    for ttft, itl, latency, out, prompt, start, error in zip(
        result["ttfts"],
        result["itls"],
        result["latencies"],
        result["output_lens"],
        result["input_lens"],
        result["start_times"],
        result["errors"],
        strict=True,
    )
]
metrics, _ = calculate_metrics([], outputs, result["duration"], None, [50.0, 90.0, 95.0, 99.0], {})
figures = {k: v for k, v in vars(metrics).items() if not k.startswith("percentiles_")}
for name in ("ttft", "tpot", "itl", "e2el"):
    for p, value in getattr(metrics, f"percentiles_{name}_ms"):
        figures[f"p{int(p)}_{name}_ms"] = value
print(json.dumps({k: float(v) for k, v in figures.items()}))
