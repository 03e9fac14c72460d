"""Results of other benchmark tools, read as runs; and our runs written in their formats.

Read (``analyze``, ``report`` and ``compare`` take the file where they take a run directory; the format
is recognised from the content): vLLM ``bench serve`` ``--save-result --save-detailed`` JSON
(``vllm_bench``), AIPerf's per-request ``profile_export.jsonl`` (``aiperf``), GuideLLM's benchmarks
JSON (``guidellm``). Written (``analyze --export``): vLLM bench serve's result JSON (``vllm``) and
llm-d's benchmark report v0.2.1 (``llm-d``, ``llmd``). A figure a file lacks stays missing (NaN,
``n/a``), never zero.
"""

from harness.interop.formats import EXPORTS, export_run, is_foreign, read_foreign, write_exports

__all__ = ["EXPORTS", "export_run", "is_foreign", "read_foreign", "write_exports"]
