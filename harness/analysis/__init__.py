"""Analysis of run directories: metrics, the baseline comparison, the dashboard and the regression check.

Library entry points (what ``make bench`` and the CLI call)::

    bundle = load_bundle(["results/run-x"])            # runs + plan results under the paths
    result = analyze(bundle, ttft_slo_s=None)           # the dict `analyze --json` prints
    write_report(bundle, result, "report.html")         # self-contained Plotly dashboard
    check = check_regression(base_result, cur_result, max_regression=0.05)
"""

from harness.analysis.analyze import analyze
from harness.analysis.dashboard import write_report
from harness.analysis.metrics import METRICS, MetricDefinition
from harness.analysis.regression import RegressionReport, check_regression
from harness.analysis.runs import Bundle, Plan, Run, load_bundle, load_run
from harness.analysis.summary import Slo, summarize

__all__ = [
    "METRICS", "Bundle", "MetricDefinition", "Plan", "RegressionReport", "Run", "Slo", "analyze", "check_regression",
    "load_bundle", "load_run", "summarize", "write_report",
]  # fmt: skip
