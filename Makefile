# The template's own commands. `make test` is the one command that checks everything:
# it makes a virtualenv, installs what the tests need (redis-server, docker-compose, curl and chromium,
# for tests/test_browser.py, with apt when missing and running as root), bakes the template and
# runs the generated projects' suites.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_TOOLS := redis-server docker-compose openssl chromium curl
APT_PACKAGES := redis-server docker-compose openssl chromium curl

.PHONY: test system-tools venv bake clean lint

test: system-tools venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing with apt:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "error: missing$$missing; install them (apt-get install $(APT_PACKAGES), or brew install redis docker-compose curl && brew install --cask chromium)" >&2; \
	    exit 1; \
	  fi; \
	fi

venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet --group test

bake: venv
	$(BIN)/cookiecutter --no-input --overwrite-if-exists . --output-dir build

clean:
	rm -rf $(VENV) .venv-bake build .pytest_cache

lint: venv
	$(BIN)/python -m pip install --quiet "ruff>=0.8"
	$(BIN)/ruff check hooks tests
	$(BIN)/ruff format --check hooks tests
