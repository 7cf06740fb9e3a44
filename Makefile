# Two commands for a newcomer: `make dev` (API with demo data) and `make test` (the suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 18100
export SONICUS_ENV ?= development

.PHONY: install dev test lint bench ts-client

# The pinned requirements, then this checkout itself (editable): the `sonicus` command.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The SPA's typed client (clients/typescript): openapi-typescript and tsc, pinned in its
# package-lock.json; tests/test_typescript_client.py uses them (skipped without Node).
TS_CLIENT := clients/typescript
$(TS_CLIENT)/node_modules/.installed: $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund
	touch $@

ts-client:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(TS_CLIENT)/node_modules/.installed; \
	else echo "npm not found: the TypeScript client check will be skipped"; fi

# Embedded default: SQLite in instance/, jobs inline, no Redis needed.
# On another port (`make dev PORT=18110`), PUBLIC_BASE_URL follows it unless set: stream and
# checkout URLs point at this server, and the token command printed below names the same
# address (the development issuer is PUBLIC_BASE_URL + /api/dev/: server and token must agree).
DEV_ENV = $(if $(PUBLIC_BASE_URL)$(filter 18100,$(PORT)),,PUBLIC_BASE_URL=http://127.0.0.1:$(PORT) )
dev: install
	$(PY) -m flask --app wsgi db upgrade
	$(PY) -m flask --app wsgi sonicus seed sonicus/data/demo_catalog.yaml
	$(PY) -m flask --app wsgi sonicus dev-media   # the demo's audio loops, once (instance/media)
	@echo
	@echo "Sonicus API on http://127.0.0.1:$(PORT)  (docs: http://127.0.0.1:$(PORT)/api/docs)"
	@echo "Get a development token in another terminal:"
	@echo "  TOKEN=\$$($(DEV_ENV)$(PY) -m flask --app wsgi sonicus dev-token --email you@example.com)"
	@echo "  curl -H \"Authorization: Bearer \$$TOKEN\" http://127.0.0.1:$(PORT)/api/user/profile"
	@echo "(add --admin for an administrator, --tier premium|pro for a paid tier)"
	@echo
	$(DEV_ENV)$(PY) -m flask --app wsgi run --host 127.0.0.1 --port $(PORT) --with-threads

# Needs PostgreSQL (TEST_DATABASE_URL, default database `test` on 127.0.0.1:5432)
# and Redis (TEST_REDIS_URL, default db 15 on 127.0.0.1:6379).
test: install ts-client
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	SONICUS_ENV=testing $(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/radon cc -s -n C sonicus
	$(VENV)/bin/radon mi -s -n B sonicus
