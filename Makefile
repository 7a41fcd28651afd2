# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv at the repository root and install everything on a fresh machine.

VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here, never in pyproject: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install demo test test-quick test-full test-full-security lint screenshots

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[engines,dev]"
	touch $@

# The browser tests drive Debian's Chromium (Playwright never downloads a browser here).
CHROMIUM := /usr/bin/chromium

# Installed where this can (root on Debian or Ubuntu); elsewhere it says what to install.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "The browser tests drive Chromium at $(CHROMIUM), which is missing. Install it" \
			"(Debian/Ubuntu: sudo apt-get install chromium; elsewhere link a Chromium or Chrome" \
			"binary there), or run 'make test-quick' without the browser. 'make demo' needs no browser."; \
		exit 1; \
	fi

install: $(VENV)/.installed $(CHROMIUM)

# The demo needs only the venv: no root, no browser.
demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/limner demo

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=25

test-quick: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

# Every test, those marked `full` included (about 40 minutes on 2 cores).
test-full: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "" --durations=25

# Every security and reliability test, the minutes-long ones included (about 15 minutes).
test-full-security: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "" tests/security tests/reliability

# The web page's screenshots in docs/screens/ (every tab at 1280x800 and 390x844), made again.
screenshots: install
	HF_HUB_OFFLINE=1 $(PY) tests/browser/screenshots.py
