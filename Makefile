# Two commands on a fresh Debian machine: `make demo` and `make test`. Each installs what it
# needs: the venv from the lock file, and Debian's mosquitto when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-from-lock
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test trials bench lint lock mosquitto systemd-tools clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

mosquitto:
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then \
		echo "installing Debian's mosquitto (the broker the demo and the tests run)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto; \
	fi

# systemd-analyze checks the unit file (verify, security score) in the tests.
systemd-tools:
	@if ! command -v systemd-analyze >/dev/null; then \
		echo "installing Debian's systemd (systemd-analyze checks the unit in the tests)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq systemd; \
	fi

demo: $(STAMP) mosquitto
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint mosquitto systemd-tools
	$(BIN)/pytest -m "not slow"

# The long trials (100 kill -9 runs); `make test` runs a short version of each.
trials: $(STAMP) mosquitto
	$(BIN)/pytest -m slow

bench: $(STAMP) mosquitto
	$(BIN)/python bench/end_to_end.py
	$(BIN)/python bench/shutdown.py

# Re-pin every dependency (after changing a range in pyproject.toml); commit the result.
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --extra dev --generate-hashes --allow-unsafe --strip-extras \
		--output-file requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) var/demo
