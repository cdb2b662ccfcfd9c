# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# Task worker processes for `make run`. db_worker runs one task at a time and has no thread
# option, so several processes let one team's slow run (bounded by its own deadline) leave the
# others' runs free to start. They claim tasks safely side by side (row locks / SQLite's
# exclusive transactions).
WORKERS ?= 4

.PHONY: run demo test test-tour test-fast lint format migrate messages bench clean system-deps

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

migrate: $(VENV)/.installed
	$(PY) manage.py migrate --no-input -v0

## make run: install, migrate, create the first admin, start gunicorn, the task workers and
## the scheduler (which queues the scheduled verification runs).
run: $(VENV)/.installed
	$(PY) manage.py migrate --no-input -v0
	$(PY) manage.py collectstatic --no-input -v0
	$(PY) manage.py compilemessages -v0 --ignore=.venv 2>/dev/null || true
	$(PY) manage.py ensure_superuser
	@echo "Console: http://$(HOST):$(PORT)/admin/  (Ctrl-C stops the console, the workers and the scheduler)"
	@trap 'kill 0' INT TERM EXIT; \
	for i in $$(seq $(WORKERS)); do $(PY) manage.py db_worker --no-reload --interval 1 & done; \
	$(PY) manage.py run_scheduler & \
	$(VENV)/bin/gunicorn console.wsgi:application --bind $(HOST):$(PORT) --workers 2 \
		--access-logfile - --forwarded-allow-ips 127.0.0.1

## make demo (optional): the console with a demo team and deployment, the CPA and CPAMP emulators
## and a private nginx serving its exported config, all on 127.0.0.1, in $(DEMO_DIR) (a database
## of its own: data/ is left alone). It prints the login; a passing run shows within a minute, and
## its demo page stops CPAMP for a failing one. Ctrl-C stops everything it started.
DEMO_DIR ?= data/demo
demo: $(VENV)/.installed
	CONSOLE_DATA_DIR=$(DEMO_DIR) $(PY) manage.py compilemessages -v0 --ignore=.venv 2>/dev/null || true
	$(PY) -m tests.fakes.demo --data-dir $(DEMO_DIR) --port $(PORT)

## Debian packages the tests need: real nginx, chromium and a CJK font for the Chinese
## screenshots (root on these machines).
system-deps:
	@command -v nginx >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 && \
	command -v msgfmt >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q . || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx-light chromium gettext \
			fonts-wqy-microhei >/dev/null; }

## make test: install what tests need and run them.
test: $(VENV)/.dev-installed system-deps
	$(PY) manage.py compilemessages -v0 --ignore=.venv >/dev/null 2>&1 || true
	$(PY) -m pytest -q -n 2 -m "not browser" $(PYTEST_ARGS)
	$(PY) -m pytest -q -m browser $(PYTEST_ARGS)

## make test-tour: the tour alone (part of make test); screenshots of every page at both sizes
## in tests/artifacts/tour/.
test-tour: $(VENV)/.dev-installed system-deps
	$(PY) -m pytest -q -m tour $(PYTEST_ARGS)

test-fast: $(VENV)/.dev-installed
	$(PY) -m pytest -q -x -m "not browser and not slow" $(PYTEST_ARGS)

## make lint: ruff (rules and format) and mypy with django-stubs over the tree in pyproject.toml.
lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

messages: $(VENV)/.dev-installed
	$(PY) manage.py makemessages -l zh_Hans --no-obsolete
	$(PY) manage.py compilemessages

bench: $(VENV)/.dev-installed system-deps
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .hypothesis tests/artifacts
