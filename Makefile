# pyramid-moa: every target bootstraps what it needs (venv, pinned deps) and is idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out

# Shipped permissive traces (data/gsm8k, see data/gsm8k/ATTRIBUTION.md): gpt-3.5 committee -> gpt-4 oracle, dollars.
TRACES ?= data/gsm8k
COMMITTEE ?= faithfulcot_gpt-3.5-turbo_COT,reread_gpt-3.5-turbo_re2_cot,faithfulcot_gpt-3.5-turbo_noNL
ORACLE ?= faithfulcot_gpt4_COT
COST ?= usd
# The full shared trace set (benchmarks A and B); not shipped, see BENCHMARKS.md.
SHARED_TRACES ?= ../shared/data/gsm8k

.PHONY: setup demo eval test lint bench clean render serve
CALIBRATION ?= $(OUT)/calibration/replay.json
SERVE_REPO ?= $(OUT)/model_repository/replay

$(STAMP): pyproject.toml requirements.lock requirements-serve.txt scripts/install_triton.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	bash scripts/install_triton.sh $(VENV)
	touch $@

setup: $(STAMP)

eval: $(STAMP)  ## main job: cross-fitted evaluation of the router on the shipped traces
	@mkdir -p $(OUT)
	$(VENV)/bin/pyramid evaluate --traces $(TRACES) --committee $(COMMITTEE) --oracle $(ORACLE) \
	  --cost $(COST) --json $(OUT)/eval.json --report $(OUT)/eval.md --plot $(OUT)/eval.png
	@cat $(OUT)/eval.md

demo: eval  ## main job; until the Triton deployment lands it is the offline evaluation

test: $(STAMP)  ## lint + all tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)  ## benchmarks A and B on the shared traces + in-process decision latency
	$(PY) scripts/bench.py $(SHARED_TRACES) $(OUT)/bench | tee $(OUT)/bench.md

$(CALIBRATION): $(STAMP)
	$(VENV)/bin/pyramid calibrate --traces $(TRACES) --committee $(COMMITTEE) --oracle $(ORACLE) \
	  --cost $(COST) --fit-fraction 0.5 --out $@

render: $(STAMP) $(CALIBRATION)  ## render the replay model repository from deploy/replay.yaml
	$(PY) scripts/render_repository.py deploy/replay.yaml --out $(SERVE_REPO) --calibration $(CALIBRATION)

serve: render  ## real tritonserver in the foreground with the replay profile (Ctrl-C stops)
	$(PY) -m pyramid_triton.server $(SERVE_REPO)

clean:
	rm -rf $(OUT) .pytest_cache .benchmarks
