# The two entry points of README.md: `make demo` (the main job) and `make test`
# (lint, type-check, the whole test suite). Both create the virtualenv on first use.
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The VAST player parser the tests judge unwrapped documents with, pinned by its lock file.
PLAYER_SRC := tests/vast/player
PLAYER ?= .cache/vast-player
PLAYER_INSTALLED := $(PLAYER)/.installed

.PHONY: demo test bench clean

$(INSTALLED): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(INSTALLED)

$(PLAYER_INSTALLED): $(PLAYER_SRC)/package.json $(PLAYER_SRC)/package-lock.json
	mkdir -p $(PLAYER)
	cp $(PLAYER_SRC)/package.json $(PLAYER_SRC)/package-lock.json $(PLAYER)/
	npm ci --prefix $(PLAYER) --cache .cache/npm --no-audit --no-fund --silent
	touch $(PLAYER_INSTALLED)

demo: $(INSTALLED)
	$(BIN)/adstream demo

test: $(INSTALLED) $(PLAYER_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
