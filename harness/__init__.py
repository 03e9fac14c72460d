"""prfaas-bench: benchmark cross-datacenter prefill/decode disaggregation (Prefill-as-a-Service).

Three views of one deployment that must agree where they overlap:

- ``harness.model``    analytic planner (the PrfaaS paper's throughput model) and cost model;
- ``harness.serving``  the serving stack, driven in virtual time (simulate) or real time (serve);
- ``harness.loadgen``  trace replay over HTTP against emulated or real OpenAI-compatible endpoints.
"""

__version__ = "0.1.0"
