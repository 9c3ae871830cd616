# The template's own commands. `make test` is the one command that checks everything:
# it makes a virtualenv, installs what the tests need (redis-server, docker-compose, curl and chromium,
# for tests/test_browser.py, with apt when missing and running as root), bakes the template and
# runs the generated projects' suites.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_TOOLS := redis-server docker-compose openssl chromium curl
APT_PACKAGES := redis-server docker-compose openssl chromium curl

.PHONY: test system-tools venv bake clean lint lock upgrade

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

# The test tools, exactly as uv.lock pins them (uv first, with pip, at the lock's version and
# hashes; then everything else with uv). Nothing is resolved.
UV_REQUIREMENT := {{cookiecutter.project_slug}}/scripts/uv_requirement.py

venv: $(BIN)/uv
	UV_PROJECT_ENVIRONMENT=$(abspath $(VENV)) $(BIN)/uv sync --locked

$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python '$(UV_REQUIREMENT)' uv.lock > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
	  --requirement $(VENV)/uv-requirement.txt

# The locks, after editing a pyproject.toml (`lock` keeps every version it can) or to move to the
# newest releases (`upgrade`): first the template's own tools (uv.lock), then the generated
# project's, one per python_version (tools/locks.py; the Pythons other than this one are locked
# in their root file systems, which needs root and debootstrap). Review the diffs, run
# `make test`, commit.
lock: $(BIN)/uv
	$(BIN)/uv lock
	$(MAKE) --no-print-directory venv
	$(BIN)/python -m tools.locks

upgrade: $(BIN)/uv
	$(BIN)/uv lock --upgrade
	$(MAKE) --no-print-directory venv
	$(BIN)/python -m tools.locks --upgrade

bake: venv
	$(BIN)/cookiecutter --no-input --overwrite-if-exists . --output-dir build

clean:
	rm -rf $(VENV) .venv-bake build .pytest_cache

lint: venv
	$(BIN)/ruff check hooks tests tools
	$(BIN)/ruff format --check hooks tests tools
