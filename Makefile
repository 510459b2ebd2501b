# The two commands a newcomer needs:  make demo  (set up + run the main job),  make test  (set up + tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
INVISMAP_ASSETS ?= $(abspath ../shared/assets)
export INVISMAP_ASSETS
OUT    ?= runs/demo

.PHONY: setup test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the project's dependency list changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/invismap data import msrs $(INVISMAP_ASSETS)/data/msrs $(OUT)/msrs
	$(BIN)/invismap data show $(OUT)/msrs --out $(OUT)/contact_sheet.png --n 12
	@echo "contact sheet: $(OUT)/contact_sheet.png"

clean:
	rm -rf $(VENV) runs .pytest_cache
