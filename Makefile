# Two commands a new user needs: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_MINUTES ?= 12

.PHONY: install dev demo test lint bench clean browser docs lock postgres

# The stamp makes re-runs instant; it is rebuilt when the package metadata changes. requirements.lock pins every
# package (make lock rewrites it), so two fresh installs a month apart get the same versions.
$(VENV)/.installed: pyproject.toml constraints.txt requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -c requirements.lock -e '.[dev]'
	touch $@

# The demo needs the base package only (torch, timm, scikit-learn...): no export, serving, tracking, tuning, docs or
# test extras. The dev install above includes it, so after `make test` the demo installs nothing more.
$(VENV)/.installed-base: pyproject.toml constraints.txt requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -c requirements.lock -e .
	touch $@

install dev: $(VENV)/.installed

# requirements.lock afresh: the newest versions pyproject.toml and constraints.txt allow (pip resolves, installs
# nothing: .ci/lock.py); then `make test` installs and tests them. Commit the new lock with the change.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python .ci/lock.py

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; without it the demo uses sklearn's digits.
demo: $(VENV)/.installed-base
	@DATA=fashion-mnist; \
	if [ ! -e "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ]; then \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR); trying: apt-get install dataset-fashion-mnist"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	  ( $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    ( $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ) ) || true; \
	fi; \
	if [ ! -e "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ]; then \
	  echo "Could not install it (needs root and Debian's archive): run 'sudo apt-get install dataset-fashion-mnist'"; \
	  echo "or put the four *-idx*-ubyte.gz files in $(FMNIST_DIR). Falling back to the 'digits' data set."; \
	  DATA=digits; \
	fi; \
	set -e; \
	$(BIN)/resnetlab train $$DATA --recipe fast --time-limit $(DEMO_MINUTES)m --name demo --exist-ok; \
	$(BIN)/resnetlab evaluate runs/demo/best.pt $$DATA --split test --tta flip --out runs/demo/test; \
	echo; echo "Demo finished. Run folder: runs/demo (metrics.csv, curves.png, best.pt, last.pt, config.yaml)"; \
	echo "Test-split evaluation: runs/demo/test (metrics.json, confusion_matrix.png/.csv, misclassified.csv)"; \
	echo "Everything in one page: runs/demo/report.html (open it in a browser)"

# Debian's chromium for the real-browser test (tests/test_serve_browser.py), installed when missing and
# possible (root or passwordless sudo); otherwise that test is skipped and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	echo "installing Debian's chromium for the browser test: apt-get install chromium"; \
	SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	( $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  ( $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 ) ) || \
	echo "could not install chromium (needs root or 'sudo -n' and Debian's archive): the browser test will be skipped"

# Debian's PostgreSQL server for the shared-study tune test (tests/test_tune_postgres.py starts its own server on a
# free port), installed when missing and possible (root or passwordless sudo); otherwise that test is skipped.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	echo "installing Debian's postgresql for the tune test: apt-get install postgresql"; \
	SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	( $$SUDO apt-get install -y -q postgresql >/dev/null 2>&1 || \
	  ( $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q postgresql >/dev/null 2>&1 ) ) || \
	echo "could not install postgresql (needs root or 'sudo -n' and Debian's archive): the PostgreSQL tune test will be skipped"

test: $(VENV)/.installed browser postgres
	$(BIN)/python -m pytest -q --durations=15

# The docs site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or a missing API reference.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

# The speed and accuracy benchmarks, each printing a table with ratios (benchmarks/README.md has the figures).
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/train_throughput.py --stem small --img-size 28
	$(BIN)/python benchmarks/predict_throughput.py
	$(BIN)/python benchmarks/runtime_throughput.py
	$(BIN)/python benchmarks/time_to_accuracy.py --recipe fast
	$(BIN)/python benchmarks/scale.py --sizes 1000,10000

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
