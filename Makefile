# The two commands a newcomer needs:  make demo  (set up + run the main job),  make test  (set up + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
INVISMAP_ASSETS ?= $(abspath ../shared/assets)
export INVISMAP_ASSETS
OUT    ?= runs/demo

.PHONY: setup lint test demo screenshot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the project's dependency list changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# ruff with the rules in pyproject.toml (ruff is pinned in the test extra); CI runs it before the tests.
lint: setup
	$(BIN)/ruff check .

test: setup
	$(BIN)/python -m pytest

# The whole pipeline on the MSRS sample (configs/demo.yaml): about 10 minutes on 2 CPU cores the first time,
# seconds when nothing changed. The report is $(OUT)/report/index.html.
demo: setup
	$(BIN)/invismap run configs/demo.yaml out=$(OUT)
	@echo "open $(OUT)/report/index.html  (make screenshot: check it in headless Chromium)"

# Render the demo report in headless Chromium (Debian's package; installed here if missing).
screenshot:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/invismap screenshot $(OUT)/report/index.html --out $(OUT)/report/screenshot.png

clean:
	rm -rf $(VENV) runs .pytest_cache
