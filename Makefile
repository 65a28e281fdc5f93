# One entry point per task; each target sets up what it needs on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run simulate test test-future test-long bench clean redis-server faketime chromium screenshot promtool

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(VENV)/bin/livechain run

simulate: $(STAMP)
	$(VENV)/bin/livechain simulate

test: $(STAMP) redis-server chromium promtool
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The same suite with the clock moved 400 days ahead (libfaketime; redis-server keeps real
# time): no test may depend on today's date.
FUTURE ?= +400d
test-future: $(STAMP) redis-server faketime chromium promtool
	faketime -f '$(FUTURE)' $(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The Redis tests (and the mirror benchmark) start their own redis-server on a free port:
# install it with apt when it is missing (Debian/Ubuntu, as root or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt-get)"; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The page's browser test (tests/test_page.py) drives Debian's chromium through Playwright.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (apt-get)"; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The alert rules' unit tests (tests/test_alerts.py) run `promtool test rules`: Debian ships
# promtool in its prometheus package (~19 MB download; the server it also installs is not started).
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool (apt-get prometheus)"; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

faketime:
	@command -v faketime >/dev/null 2>&1 || { \
	  echo "installing faketime (apt-get)"; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null; }

# Refresh the README's picture of the page (docs/page.png) from the browser test.
screenshot: $(STAMP) chromium
	UPDATE_SCREENSHOT=1 $(VENV)/bin/pytest -q tests/test_page.py

# The long form of the reliability suites (README "Reliability"): ≥ 1M fuzzed decoder inputs,
# 1,000 pollers + 1,000 stream clients for 60 s, schemathesis with 200 examples per operation,
# the descriptor-reserve and feed-fault tests, and the fault suite under load (tests/faults: every
# fault FAULT_ROUNDS times). Results: docs/reliability.md, docs/reliability-load.json,
# docs/reliability-faults.json.
FAULT_ROUNDS ?= 10
test-long: $(STAMP) redis-server
	RELIABILITY_LONG=1 RELIABILITY_FUZZ_EXAMPLES=2000 RELIABILITY_FUZZ_BATCH=300 RELIABILITY_SCHEMA_EXAMPLES=200 \
	  RELIABILITY_FAULT_ROUNDS=$(FAULT_ROUNDS) \
	  $(VENV)/bin/pytest -q -s -o timeout=1800 -p no:cacheprovider tests/test_fuzz.py tests/test_load.py \
	  tests/test_openapi.py tests/test_descriptor_reserve.py tests/test_hostile_clients.py tests/test_faults.py \
	  tests/faults $(PYTEST_ARGS)

bench: $(STAMP) redis-server
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
