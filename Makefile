# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   - set up .venv, simulate a small dataset, run the whole pipeline on it
#   make test   - set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: venv demo test lint docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py romosaic/resample/_kernels.c romosaic/skymatch/_statistics.c \
		romosaic/_scale.c romosaic/outlier/_kernels.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,dask]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/romosaic simulate $(DEMO_DIR) --n-exposures 4 --n-detectors 2 --size 1024 --seed 1
	cd $(DEMO_DIR) && $(abspath $(BIN))/strun roman_mos sim_f158_asn.json
	$(BIN)/romosaic preview $(DEMO_DIR)/sim_f158_coadd.asdf -o $(DEMO_DIR)/sim_f158_coadd.png
	@echo ""
	@echo "Demo products:"
	@ls -1 $(abspath $(DEMO_DIR))/sim_f158_coadd.asdf $(abspath $(DEMO_DIR))/sim_f158_cat.parquet \
		$(abspath $(DEMO_DIR))/sim_f158_segm.asdf $(abspath $(DEMO_DIR))/sim_f158_coadd.png

# The tests, and the examples in the docstrings, one worker process per core;
# a module's tests stay in one worker, which builds its shared data once.
test: $(STAMP)
	$(BIN)/python -m pytest -q --doctest-modules -n auto --dist loadfile romosaic tests

# Sphinx is the docs extra of pyproject.toml; warnings are errors.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet "sphinx>=7"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -b html -W --keep-going -q docs docs/_build/html
	@echo "Documentation: $(abspath docs/_build/html/index.html)"

lint: $(STAMP)
	$(BIN)/ruff check romosaic tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info docs/_build
