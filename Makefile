# Celestial Nexus: the only entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCKS := services/wechat-gateway/requirements-lock.txt services/ai-api/requirements-lock.txt requirements-dev-lock.txt
COMPOSE ?= docker compose

.DEFAULT_GOAL := help
.PHONY: help venv run stack test test-compose lint rules format bench bench-compare lock \
        up down logs ps prod-up prod-ps prod-logs prod-down prod-images prod-rollback certs certbot clean prod-env prod-seed-certs \
        certbot-args check-endpoint

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
	@$(BIN)/python scripts/run_stack.py

test: venv ## every test (unit, integration, config); integration tests skip without their binaries unless CI=true
	$(BIN)/pytest

# The WECHAT_* values check-endpoint signs with: the environment, then ENV_FILE when set
# (production: ENV_FILE=/etc/celestial-nexus/prod.env), else .env then .env.example as make run.
ENV_FILE ?=

check-endpoint: venv ## check a callback URL the way WeChat does: make check-endpoint URL=https://wx.example.com/wechat [ENV_FILE=…]
	@test -n "$(URL)" || { echo "usage: make check-endpoint URL=https://your-domain/wechat [ENV_FILE=prod.env] [ARGS=--insecure]"; exit 2; }
	@ENV_FILE="$(ENV_FILE)" $(BIN)/python scripts/check_endpoint.py "$(URL)" $(ARGS)

rules: ## promtool/amtool: check the Prometheus and Alertmanager configs, run the alert rule tests
	promtool check config infra/prometheus/prometheus.yml
	promtool test rules infra/prometheus/tests/alerts.test.yml
	amtool check-config infra/alertmanager/alertmanager.yml

lint: venv ## ruff (print banned), the format check, mypy on the gateway and the alert relay
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --ignore-missing-imports services/wechat-gateway/wechat_gateway
	$(BIN)/mypy --strict services/alert-relay/alert_relay

format: venv ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv ## benchmarks, each against a baseline measured in the same run
	$(BIN)/python -m bench

bench-compare: venv ## is a gateway change cheaper? make bench-compare REV=HEAD [CASE=fresh] [STORE=redis]
	@test -n "$(REV)" || { echo "usage: make bench-compare REV=<git revision> [CASE=duplicate|fresh] [STORE=local|redis]"; exit 2; }
	$(BIN)/python -m bench.compare "$(REV)" --case $(or $(CASE),duplicate) --store $(or $(STORE),local)

lock: venv ## recompile the lock files from the requirements*.in files
	cd services/wechat-gateway && ../../$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-lock.txt requirements.in
	cd services/ai-api && ../../$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-lock.txt requirements.in
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev-lock.txt requirements-dev.in

# ---- deploy: the compose stack (compose.yaml; production adds compose.prod.yaml) ----------
CERTS_DIR := infra/nginx/certs
PROD_ENV_FILE ?= /etc/celestial-nexus/prod.env
PROD_COMPOSE = $(COMPOSE) --env-file $(PROD_ENV_FILE) -f compose.yaml -f compose.prod.yaml

test-compose: venv ## the real compose stack under a Docker engine of its own (root, docker.io, debootstrap)
	$(BIN)/pytest -m compose -s tests/compose

# up, down, logs and ps are for development: plain `docker compose` (compose.yaml, .env, unless
# COMPOSE_FILE / COMPOSE_ENV_FILES say otherwise). On a production host use the prod-* targets.
up: certs ## development: the compose stack in the background (builds the images; config from .env)
	$(COMPOSE) up -d --build

down: ## development: stop the compose stack (data volumes are kept); production: make prod-down
	$(COMPOSE) down

logs: ## development: follow the compose stack's logs (SERVICE=nginx for one); production: make prod-logs
	$(COMPOSE) logs -f --tail=100 $(SERVICE)

ps: ## development: the compose stack's containers and their health; production: make prod-ps
	$(COMPOSE) ps

certs: $(CERTS_DIR)/fullchain.pem ## a self-signed certificate for local use (infra/nginx/certs/)

$(CERTS_DIR)/fullchain.pem:
	mkdir -p $(CERTS_DIR)
	openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
	  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout $(CERTS_DIR)/privkey.pem -out $(CERTS_DIR)/fullchain.pem 2>/dev/null
	chmod 600 $(CERTS_DIR)/privkey.pem

prod-env:
	@test -r "$(PROD_ENV_FILE)" || { echo "PROD_ENV_FILE=$(PROD_ENV_FILE) is not readable: install .env.example there (outside the repo, group docker, mode 0640; README, Production) and set real secrets"; exit 2; }

# nginx needs some certificate to start: until certbot has delivered one, the certs volume
# holds the self-signed pair.
prod-seed-certs: prod-env certs
	$(PROD_COMPOSE) run --rm --no-deps -v $(abspath $(CERTS_DIR)):/seed:ro --entrypoint /bin/sh certbot \
	  -c 'test -s /certs/fullchain.pem || cp /seed/fullchain.pem /seed/privkey.pem /certs/'

# Every build prod-up makes is also tagged with its commit (scripts/release.py), so that a
# bad deploy goes back in seconds, without building: make prod-rollback TAG=<commit>.
prod-up: prod-seed-certs ## production: compose.yaml + compose.prod.yaml, secrets from PROD_ENV_FILE
	$(PROD_COMPOSE) up -d --build --remove-orphans
	@$(PYTHON) scripts/release.py tag -- $(PROD_COMPOSE)

prod-images: prod-env ## production: the builds kept for a rollback, newest first
	@$(PYTHON) scripts/release.py list -- $(PROD_COMPOSE)

prod-rollback: prod-env ## production: back to an earlier build without building: make prod-rollback TAG=<commit>
	@test -n "$(TAG)" || { echo "usage: make prod-rollback TAG=<commit>   (make prod-images lists the builds kept)"; exit 2; }
	@$(PYTHON) scripts/release.py rollback "$(TAG)" -- $(PROD_COMPOSE)

prod-ps: prod-env ## production: the containers and their health
	$(PROD_COMPOSE) ps

prod-logs: prod-env ## production: follow the logs (SERVICE=nginx for one service)
	$(PROD_COMPOSE) logs -f --tail=100 $(SERVICE)

prod-down: prod-env ## production: stop the stack (volumes, certificates included, are kept)
	$(PROD_COMPOSE) down

certbot-args:
	@test -n "$(DOMAIN)" -a -n "$(EMAIL)" || { echo "usage: make certbot DOMAIN=wx.example.com EMAIL=you@example.com"; exit 2; }

certbot: certbot-args prod-seed-certs ## first Let's Encrypt certificate: make certbot DOMAIN=wx.example.com EMAIL=you@example.com
	$(PROD_COMPOSE) up -d --build nginx
	$(PROD_COMPOSE) run --rm --no-deps --entrypoint certbot certbot certonly --webroot -w /var/www/acme \
	  -d $(DOMAIN) --email $(EMAIL) --agree-tos --no-eff-email --non-interactive \
	  --deploy-hook 'cp -L "$$RENEWED_LINEAGE/fullchain.pem" "$$RENEWED_LINEAGE/privkey.pem" /certs/'
	$(PROD_COMPOSE) exec nginx nginx -s reload
	@echo "certificate for $(DOMAIN) installed; the certbot service renews it (make prod-up starts it)"

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
