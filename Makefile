# `make reproduce` and `make test` are the two commands of the README; both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lvit-installed

.PHONY: reproduce test lint notebooks clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[notebooks,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/lvit reproduce

lint: $(STAMP)
	$(BIN)/ruff check .

# nbval re-executes every notebook at its default (smoke) profile into a fresh results dir, so every
# checked number is recomputed, and compares the `# NBVAL_CHECK_OUTPUT` cells with the committed outputs.
NBVAL := -p no:randomly --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	--nbval-cell-timeout=600

test: lint
	$(BIN)/python -m pytest
	tmp=$$(mktemp -d) && LVIT_RESULTS_DIR=$$tmp $(BIN)/python -m pytest $(NBVAL) notebooks/; \
		status=$$?; rm -rf $$tmp; exit $$status

# Re-execute the notebooks at smoke and store their outputs (what nbval compares); then commit both files.
notebooks: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.py
	tmp=$$(mktemp -d) && cd notebooks && LVIT_RESULTS_DIR=$$tmp ../$(BIN)/jupyter nbconvert --to notebook \
		--execute --inplace --ExecutePreprocessor.record_timing=False *.ipynb; status=$$?; rm -rf $$tmp; \
		exit $$status

clean-venv:
	rm -rf $(VENV)
