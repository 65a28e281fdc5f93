# One entry point per task; each target sets up what it needs on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run simulate test test-future bench clean redis-server faketime

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(VENV)/bin/livechain run

simulate: $(STAMP)
	$(VENV)/bin/livechain simulate

test: $(STAMP) redis-server
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The same suite with the clock moved 400 days ahead (libfaketime; redis-server keeps real
# time): no test may depend on today's date.
FUTURE ?= +400d
test-future: $(STAMP) redis-server faketime
	faketime -f '$(FUTURE)' $(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The Redis tests (and the mirror benchmark) start their own redis-server on a free port:
# install it with apt when it is missing (Debian/Ubuntu, as root or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt-get)"; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

faketime:
	@command -v faketime >/dev/null 2>&1 || { \
	  echo "installing faketime (apt-get)"; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null; }

bench: $(STAMP) redis-server
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
