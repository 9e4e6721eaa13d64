# Two commands do everything on a fresh Debian machine with Python 3.11:
#   make demo   set up, run the whole workflow on the embedded default (demo clips, tiny model, CPU),
#               then write its report (results/report.html)
#   make test   set up, then run the test suite
# `make dag` redraws docs/rulegraph.{svg,mmd}; `make clean` removes the demo's outputs.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
CORES ?= all
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Jobs run `python`, `accelerate` and friends from PATH: the virtual environment comes first, as if activated.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test dag clean

setup: $(STAMP)

# torch first and pinned exactly: that resolves to the CPU build here; a looser pin lets pip pull a
# multi-GB CUDA build. Debian's ffmpeg provides ffmpeg/ffprobe for the data stage.
$(STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	command -v ffprobe >/dev/null || { $(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg; }
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake all --cores $(CORES)
	$(BIN)/snakemake all --cores $(CORES) --report results/report.html
	@echo "report:   results/report.html (figures also under results/report/ and runs/demo/report/)"
	@echo "estimate: results/estimate.txt"

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# The rule graph of the demo. It runs the demo first: rules behind the shards checkpoint appear only
# once the checkpoint has run.
dag: demo
	command -v dot >/dev/null || { $(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends graphviz; }
	mkdir -p docs
	$(BIN)/snakemake all --rulegraph dot > docs/rulegraph.dot.tmp
	dot -Tsvg docs/rulegraph.dot.tmp > docs/rulegraph.svg.tmp && mv docs/rulegraph.svg.tmp docs/rulegraph.svg
	$(BIN)/snakemake all --rulegraph mermaid-js > docs/rulegraph.mmd.tmp && mv docs/rulegraph.mmd.tmp docs/rulegraph.mmd
	rm -f docs/rulegraph.dot.tmp

clean:
	rm -rf results cache runs logs .snakemake
