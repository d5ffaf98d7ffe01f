# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   - set up .venv, simulate a small dataset, run the whole pipeline on it
#   make test   - set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: venv demo test lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py romosaic/resample/_kernels.c romosaic/skymatch/_statistics.c \
		romosaic/_scale.c romosaic/outlier/_kernels.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,dask,deblend]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/romosaic simulate $(DEMO_DIR) --n-exposures 4 --n-detectors 2 --size 1024 --seed 1
	cd $(DEMO_DIR) && $(abspath $(BIN))/strun roman_mos sim_f158_asn.json
	$(BIN)/romosaic preview $(DEMO_DIR)/sim_f158_coadd.asdf -o $(DEMO_DIR)/sim_f158_coadd.png
	@echo ""
	@echo "Demo products:"
	@ls -1 $(abspath $(DEMO_DIR))/*_coadd.* 

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check romosaic tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
