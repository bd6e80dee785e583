# Every target creates .venv and installs from pyproject.toml first, so a fresh checkout needs nothing else.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PTQFLOW_HOME ?= $(CURDIR)/.ptqflow

.PHONY: demo test test-quick test-interrupts bench bench-zoo install clean serve prefect-schema

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ptq convert --fmk=ONNX --modelFile=examples/digits/digits_cnn.onnx \
		--outputFile=out/digits_fixed8 --configFile=examples/configs/weight_fixed_bit.cfg
	$(BIN)/ptq convert --fmk=ONNX --modelFile=examples/digits/digits_cnn.onnx \
		--outputFile=out/digits_mixed --configFile=examples/configs/weight_mixed_bit.cfg
	$(BIN)/ptq convert --fmk=ONNX --modelFile=examples/digits/digits_cnn.onnx \
		--outputFile=out/digits_int8 --configFile=examples/configs/full_quant.cfg --inputDataFormat=NCHW
	$(BIN)/python examples/evaluate_digits.py out/digits_fixed8.onnx out/digits_mixed.onnx out/digits_int8.onnx

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# the quick loop (about half a minute): no Prefect servers, Dask clusters, CLI processes or multi-second tests
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Ctrl-C at 20 random moments of a conversion (the suite interrupts 2): one line and exit 130 each, within 5 s
test-interrupts: $(STAMP)
	PTQ_INTERRUPT_MOMENTS=20 $(BIN)/python -m pytest -q tests/service/test_interrupt.py -k random_moments

bench: $(STAMP)
	bash benchmarks/setup_bench.sh
	HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_weight_quant.py
	HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_full_quant.py
	HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_dynamic_quant.py
	HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_int8_portability.py
	.venv-bench/bin/python benchmarks/bench_max_drop.py
	HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_orchestration.py
	.venv-bench/bin/python benchmarks/bench_flow_cost.py
	.venv-bench/bin/python benchmarks/bench_calibration_speed.py
	.venv-bench/bin/python benchmarks/bench_parity.py
	.venv-bench/bin/python benchmarks/bench_zoo.py
	.venv-bench/bin/python benchmarks/bench_debug.py
	.venv-bench/bin/python benchmarks/bench_debug.py --flow-cost
	HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_alwc_sensitivity.py
	.venv/bin/python benchmarks/bench_large_model.py

# the model zoo alone (issue 15): every wheel model in every mode, beside ORT's and NNCF's quantizers
bench-zoo: $(STAMP)
	bash benchmarks/setup_bench.sh
	.venv-bench/bin/python benchmarks/bench_zoo.py

# Local Prefect server + UI on 127.0.0.1:$(PORT) serving the quantize, sweep and (with WATCH=dir) watch-folder flows
PORT ?= 4200
CRON ?= */10 * * * *
serve: $(STAMP)
	$(BIN)/ptq serve --port $(PORT) --cron "$(CRON)" $(if $(WATCH),--watch $(WATCH))

clean:
	rm -rf $(VENV) .ptqflow out

# after a Prefect upgrade: rewrite ptqflow/prefect_schema.sql from a database Prefect's migrations make
prefect-schema: $(STAMP)
	$(BIN)/python -m ptqflow.prefect_db
