# `make figures` and `make test` set everything up on a fresh machine, then run.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dlcore-installed

.PHONY: setup test figures figures-smoke book slides student lab chromium clean

# Installed once; again only when pyproject.toml or constraints.txt change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,book]"
	$(PY) -m ipykernel install --sys-prefix --name dlcore --display-name "Python (dlcore)"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest

figures: setup
	$(PY) -m dlcore figures

figures-smoke: setup
	$(PY) -m dlcore figures --smoke

# The static site of the executed notebooks (build/book/index.html) and the lecture decks (build/slides/), both
# offline; they show what the last `make figures` wrote to build/notebooks/ and execute nothing.
book: setup
	$(PY) -m dlcore book

slides: setup
	$(PY) -m dlcore slides

# The notebooks without their worked solutions (build/student/): every exercise cell emptied, outputs cleared.
student: setup
	$(PY) -m dlcore student

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# Headless Chromium and its driver for tests/test_lab.py (the notebooks' widgets in a real JupyterLab). Debian's
# packages; a no-op when both are there. Without them that test skips, saying so.
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver: installed"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "no apt-get: install Chromium and chromedriver yourself, or tests/test_lab.py skips"; \
	fi

clean:
	rm -rf build .pytest_cache
