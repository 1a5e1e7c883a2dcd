# `make figures` and `make test` set everything up on a fresh machine, then run.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dlcore-installed

.PHONY: setup test figures figures-smoke lab clean

# Installed once; again only when pyproject.toml or constraints.txt change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name dlcore --display-name "Python (dlcore)"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest

figures: setup
	$(PY) -m dlcore figures

figures-smoke: setup
	$(PY) -m dlcore figures --smoke

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf build .pytest_cache
