"""Results of other benchmark tools, read as runs; and our runs written in their formats.

Read (``analyze``, ``report`` and ``compare`` take the file where they take a run directory; the format
is recognised from the content), one module each: vLLM ``bench serve`` ``--save-result
--save-detailed`` JSON (``vllm_bench``), AIPerf's per-request ``profile_export.jsonl`` (``aiperf``),
GuideLLM's ``benchmarks.json`` (``guidellm``). Written by ``analyze --export FORMAT``: ``vllm``, vLLM
bench serve's result JSON (``vllm_bench``), and ``llm-d``, llm-d's benchmark report v0.2.1
(``llmd``). A figure a file lacks stays missing (NaN; ``null`` in JSON), never zero. The mapping of
their definitions onto ours: docs/interop.md.
"""

from harness.interop.formats import EXPORTS, export_run, is_foreign, read_foreign, write_exports

__all__ = ["EXPORTS", "export_run", "is_foreign", "read_foreign", "write_exports"]
