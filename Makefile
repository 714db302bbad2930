# Two entry points for a fresh machine: `make demo` (install + the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# These exact releases install from local disk on the project's x86_64 machines; elsewhere pip
# fetches them (a CUDA build of torch, several GB).
TORCH ?= torch==2.14.1 torchvision==0.29.1
DEMO ?= demo

.PHONY: install test demo lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH) -e '.[cpu,train,export,dev]'
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collects no test; that is not a failure of the code.
test: lint
	$(PY) -m pytest -q -ra --durations=15 || [ $$? -eq 5 ]

demo: install
	$(VENV)/bin/digit-data synth --out $(DEMO)/data --train 2000 --valid 200 --test 200 --seed 0
