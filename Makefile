# Two entry points for a fresh machine: `make demo` (install + the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# These exact releases install from local disk on the project's x86_64 machines; elsewhere pip
# fetches them (a CUDA build of torch, several GB).
TORCH ?= torch==2.14.1 torchvision==0.29.1
DEMO ?= demo

.PHONY: install test demo lint gpu-check docs-pictures

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH) -e '.[cpu,train,export,triton,ray,openvino,dev]'
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collects no test; that is not a failure of the code.
test: lint
	$(PY) -m pytest -q -ra --durations=15 || [ $$? -eq 5 ]

# The whole pipeline on the embedded synthetic data, CPU only (10 minutes on 2 AVX-512 cores, 14 on AVX2 ones):
# data -> train (nano) -> export (ONNX fp32 + fp16 + int8 and OpenVINO IR, parity-gated) -> read
# -> parity and latency of every form (ONNX Runtime and OpenVINO side by side).
demo: install
	rm -rf $(DEMO)/data $(DEMO)/run $(DEMO)/export $(DEMO)/pred.csv $(DEMO)/pred.json $(DEMO)/sheet.png
	$(VENV)/bin/digit-data synth --out $(DEMO)/data --train 2000 --valid 200 --test 200 --seed 0 --workers 2
	$(VENV)/bin/digit-train --data $(DEMO)/data --out $(DEMO)/run --preset nano --device cpu
	$(VENV)/bin/digit-export $(DEMO)/run --out $(DEMO)/export --fp16 --int8 --calib-method percentile --openvino
	$(VENV)/bin/digit-read $(DEMO)/data/test --model $(DEMO)/export --json $(DEMO)/pred.json --sheet $(DEMO)/sheet.png > $(DEMO)/pred.csv
	$(VENV)/bin/digit-bench parity --run $(DEMO)/run --export $(DEMO)/export --data $(DEMO)/data > /dev/null
	$(VENV)/bin/digit-bench latency --export $(DEMO)/export --data $(DEMO)/data --batch 1,8,32 > /dev/null
	@echo; cat $(DEMO)/export/parity.md; echo; cat $(DEMO)/export/latency.md; echo
	@echo "artefacts:"
	@echo "  data set        $(DEMO)/data/{train,valid,test}/ + {train,valid,test}.json"
	@echo "  training run    $(DEMO)/run/ (best.pt, last.pt, metrics.jsonl, fig1-4 PNGs, pred.csv)"
	@echo "  export          $(DEMO)/export/ (model.onnx, model.fp16.onnx, model.int8.onnx + its calibration cache, model.xml/.bin + model.int8.xml/.bin for OpenVINO, model.json)"
	@echo "  HW2 submission  $(DEMO)/pred.csv $(DEMO)/pred.json"
	@echo "  benchmarks      $(DEMO)/export/{parity,latency}.{json,md}, $(DEMO)/export/parity/ (pictures)"
	@echo "  contact sheet   $(DEMO)/sheet.png (24 test images, drawn: boxes, digits, scores, number)"

# On a machine with an NVIDIA GPU: every GPU path (environment, GPU tests, CUDA+AMP training
# and resume, torchrun/NCCL, the seed's R101 throughput, eager latency, export with engines,
# read, parity, latency) into gpu-check.md/.json, about five minutes on an H100/H200. Offline:
# it runs with $(PYTHON), which must have a CUDA build of torch and torchvision, and installs
# only the project (pip --no-deps). WHEELS=DIR also installs missing packages from DIR alone;
# VENV=1 builds $(GPU_VENV) from PyPI instead. Without a GPU it stops at once.
PYTHON ?= python3
GPU_VENV ?= .venv-gpu
GPU_FRESH = $(filter 1,$(VENV))
GPU_PY = $(if $(GPU_FRESH),$(GPU_VENV)/bin/python,$(PYTHON))
gpu-check:
	$(if $(shell nvidia-smi -L 2>/dev/null),,$(error gpu-check: no NVIDIA GPU here (nvidia-smi lists none); run it on a machine with one))
	$(PYTHON) benchmarks/gpu_install.py --python $(PYTHON) $(if $(WHEELS),--wheels $(WHEELS)) $(if $(GPU_FRESH),--venv $(GPU_VENV))
	$(GPU_PY) -m digit_reader.benchmarks.gpu_check --out gpu-check.md --work gpu-check

# The README's pictures, from the demo's outputs (run `make demo` first): its contact sheet, and
# the first parity picture digit-bench parity drew (an image some form reads differently).
docs-pictures: install
	mkdir -p docs
	$(VENV)/bin/digit-read $(DEMO)/data/test --model $(DEMO)/export --sheet docs/sheet.png > /dev/null
	@first=$$(ls $(DEMO)/export/parity/*/*.png 2>/dev/null | head -1); \
	if [ -n "$$first" ]; then cp "$$first" docs/parity-example.png; echo "docs/parity-example.png <- $$first"; \
	else echo "no form read any image differently from PyTorch: no parity picture"; fi
