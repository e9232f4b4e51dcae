# Two commands on a fresh Debian machine: `make demo` and `make test`. Each installs what it
# needs: the venv from the lock file, and Debian's mosquitto and dbus-daemon when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-from-lock
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test trials bench lint lock mosquitto dbus systemd-tools install uninstall clean

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

# The simulated BlueZ (demo, tests, bench) runs on a private dbus-daemon.
dbus:
	@if ! command -v dbus-daemon >/dev/null && [ ! -x /usr/bin/dbus-daemon ]; then \
		echo "installing Debian's dbus-daemon (the simulated BlueZ's private bus)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dbus-daemon; \
	fi

# systemd-analyze checks the unit file (verify, security score) in the tests.
systemd-tools:
	@if ! command -v systemd-analyze >/dev/null; then \
		echo "installing Debian's systemd (systemd-analyze checks the unit in the tests)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq systemd; \
	fi

demo: $(STAMP) mosquitto dbus
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint mosquitto dbus systemd-tools
	$(BIN)/pytest -m "not slow"

# The long trials (100 kill -9 runs); `make test` runs a short version of each.
trials: $(STAMP) mosquitto dbus
	$(BIN)/pytest -m slow

bench: $(STAMP) mosquitto dbus
	$(BIN)/python bench/end_to_end.py
	$(BIN)/python bench/shutdown.py
	$(BIN)/python bench/buffer.py
	$(BIN)/python -m bench.kill_trials
	$(BIN)/python bench/modbus_line.py
	$(BIN)/python -m bench.ble
	$(BIN)/python -m bench.cost
	$(BIN)/python bench/wire_bytes.py

# Re-pin every dependency (after changing a range in pyproject.toml); commit the result.
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --extra dev --generate-hashes --allow-unsafe --strip-extras \
		--output-file requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--output-file requirements-runtime.lock pyproject.toml

# The service: runtime dependencies only (from requirements-runtime.lock) in a venv under
# $(PREFIX), the unit, the sysusers and tmpfiles snippets, and a config that passes `check`
# (never overwritten). DESTDIR= installs into a scratch root (what the tests do).
PREFIX ?= /opt/fieldgate
DESTDIR ?=
UNITDIR ?= /etc/systemd/system
# The development venv (pytest, mypy …) is not needed: pip builds the package in isolation.
install:
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)/venv
	$(DESTDIR)$(PREFIX)/venv/bin/pip install --quiet --require-hashes --no-deps \
		-r requirements-runtime.lock
	$(DESTDIR)$(PREFIX)/venv/bin/pip install --quiet --no-deps \
		--force-reinstall .
	sed 's#/opt/fieldgate/venv#$(PREFIX)/venv#' systemd/fieldgate.service \
		| install -D -m 644 /dev/stdin $(DESTDIR)$(UNITDIR)/fieldgate.service
	install -D -m 644 systemd/fieldgate.sysusers.conf $(DESTDIR)/usr/lib/sysusers.d/fieldgate.conf
	install -D -m 644 systemd/fieldgate.tmpfiles.conf $(DESTDIR)/usr/lib/tmpfiles.d/fieldgate.conf
	@if [ -e $(DESTDIR)/etc/fieldgate/fieldgate.yaml ]; then \
		echo "kept the existing /etc/fieldgate/fieldgate.yaml"; \
	else \
		install -D -m 644 examples/fieldgate.yaml $(DESTDIR)/etc/fieldgate/fieldgate.yaml; \
	fi
	@if [ -z "$(DESTDIR)" ]; then \
		systemd-sysusers fieldgate.conf && systemd-tmpfiles --create fieldgate.conf \
		&& systemctl daemon-reload; \
	fi
	@echo "installed. Next: edit /etc/fieldgate/fieldgate.yaml (gateway id, broker, devices),"
	@echo "  $(PREFIX)/venv/bin/fieldgate check -c /etc/fieldgate/fieldgate.yaml"
	@echo "  systemctl enable --now fieldgate && systemctl status fieldgate"
	@echo "  journalctl -u fieldgate -f"

# Removes the program; keeps the config (/etc/fieldgate) and the buffer (/var/lib/fieldgate).
uninstall:
	@if [ -z "$(DESTDIR)" ]; then systemctl disable --now fieldgate || true; fi
	rm -rf $(DESTDIR)$(PREFIX)/venv
	rm -f $(DESTDIR)$(UNITDIR)/fieldgate.service $(DESTDIR)/usr/lib/sysusers.d/fieldgate.conf \
		$(DESTDIR)/usr/lib/tmpfiles.d/fieldgate.conf
	@if [ -z "$(DESTDIR)" ]; then systemctl daemon-reload; fi
	@echo "removed; /etc/fieldgate and /var/lib/fieldgate (config and buffer) are kept"

clean:
	rm -rf $(VENV) var/demo
