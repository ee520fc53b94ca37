# seq2seq-attn: install, lint and test. Everything lives in .venv/ inside the repository.
PYTHON ?= python3
# The torch requirement is installed before anything else so that pip never resolves an
# unpinned torch (which would pull gigabytes of CUDA packages). Override: make install TORCH=...
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
INSTALL_STAMP := $(VENV)/.install-stamp
TORCH_STAMP := $(VENV)/.torch-spec

.PHONY: install install-browser lint test reproduce clean FORCE

install: $(INSTALL_STAMP)

# Rewritten only when the requested torch changes, so a new TORCH=... triggers a reinstall.
$(TORCH_STAMP): FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@

$(INSTALL_STAMP): pyproject.toml $(TORCH_STAMP)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[dev,plot,ctranslate2,moses,tensorboard,serve,serve-test]'
	touch $@

# Debian's Chromium (and its driver) for the explorer's browser test (tests/test_explorer_browser.py,
# skipped with a reason without it); Playwright drives this system browser and never downloads one.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q chromium chromium-driver; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

# The Multi30k benchmark end to end (see scripts/reproduce.py); run it again to resume.
# Raw files come from MULTI30K_DIR, else ../shared/data/multi30k, else the official download.
PAIR ?= de-en
MODELS ?= transformer rnn-bahdanau
reproduce: install
	$(BIN)/python scripts/reproduce.py --pair $(PAIR) --models $(MODELS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
