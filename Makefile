# Celestial Nexus: the only entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCKS := services/wechat-gateway/requirements-lock.txt services/ai-api/requirements-lock.txt requirements-dev-lock.txt
COMPOSE ?= docker compose

.DEFAULT_GOAL := help
.PHONY: help venv run stack test test-unit test-integration test-compose lint format bench lock \
        up down logs ps prod-up certs certbot clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: $(LOCKS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(addprefix -r ,$(LOCKS))
	touch $@

venv: $(VENV)/.installed ## create .venv from the lock files

run: venv ## gateway (127.0.0.1:9090) + AI API (127.0.0.1:8000) as local processes, development defaults
	@$(BIN)/python scripts/run_local.py

stack: venv certs ## the process stack: redis + gateway + AI API + nginx TLS, from the production config files
	@$(BIN)/python scripts/run_local.py --stack

test: venv ## every test (unit, integration, config); integration tests skip without their binaries unless CI=true
	$(BIN)/pytest

lint: venv ## ruff (print banned) and the format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv ## benchmarks, each against a baseline measured in the same run
	$(BIN)/python -m bench

lock: venv ## recompile the lock files from the requirements*.in files
	cd services/wechat-gateway && ../../$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-lock.txt requirements.in
	cd services/ai-api && ../../$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-lock.txt requirements.in
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev-lock.txt requirements-dev.in

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
