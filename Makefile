# Two commands matter: `make serve` and `make test`. Both set everything up
# from a fresh clone (virtualenv, install, generated gRPC code) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard proto/nba/v1/*.proto)
GEN    := $(patsubst proto/%.proto,%_pb2.py,$(PROTOS))

.PHONY: serve test lint proto install clean bench bench-store bench-profiles bench-tracking bench-replicas bench-learning bench-adaptation loadtest bench-obd bench-console

# Logs as plain text for a person at the terminal (NBA_LOG_FORMAT=json for machines). Without
# NBA_ADMIN_TOKENS (or a config file), an editor token is made once in var/admin-token, so that
# the console and the admin API can be signed in to at once.
serve: $(GEN)
	@mkdir -p var
	@$(BIN)/nba db upgrade
	@if [ -z "$${NBA_ADMIN_TOKENS:-}" ] && [ -z "$${NBA_CONFIG:-}" ]; then \
		[ -s var/admin-token ] || (umask 077; $(BIN)/python -c 'import secrets; print(secrets.token_hex(16))' > var/admin-token); \
		echo "the console: http://localhost:$${NBA_HTTP_PORT:-8080}/console (sign in with the editor token in var/admin-token; NBA_ADMIN_TOKENS replaces it)"; \
	fi
	@echo "starting nba serve: ready when the log says 'serving on port $${NBA_PORT:-50051}' (Ctrl-C stops it)"
	@if [ -z "$${NBA_ADMIN_TOKENS:-}" ] && [ -z "$${NBA_CONFIG:-}" ]; then export NBA_ADMIN_TOKENS="you:editor:$$(cat var/admin-token)"; fi; \
		NBA_LOG_FORMAT=$${NBA_LOG_FORMAT:-text} exec $(BIN)/nba serve

# The suite in TEST_WORKERS processes (pytest-xdist): most tests wait on a server, a database
# or a child process, so three processes keep two cores busy (measured on 2 cores: 12:17
# against 14:26 with two, the CPU used the same). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
# The 15 slowest tests are listed at the end: where the suite's time goes, run after run.
test: $(GEN)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

# Lint: pyflakes, pycodestyle, import order, bugbear, pyupgrade (ruff check), the layout (ruff
# format --check: `.venv/bin/ruff format .` fixes it), then the type hints of nba/ and bandit/
# (mypy); all configured in pyproject.toml.
lint: $(GEN)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

install: $(STAMP)

# The service against gRPC's own floor: throughput, CPU per call, latency, scaling, workers.
bench: $(GEN)
	$(BIN)/python loadtests/bench_service.py

# The decision log's write throughput, size and retention, on SQLite and PostgreSQL.
bench-store: $(GEN)
	$(BIN)/python loadtests/bench_store.py

# Customer profiles at scale on PostgreSQL: 100,000 and 1,000,000 customers (10 events each, loaded
# with COPY), TrackBatch, GetProfile, Decide on a stored profile, replicas on Redis, memory, disk.
bench-profiles: $(GEN)
	$(BIN)/python loadtests/bench_profiles.py

# The console's overview page with 100,000 and 10,000,000 logged decisions (SQLite, generated in
# bulk), timed in a real browser (Debian's chromium) and as GetOverview calls.
bench-console: $(GEN)
	$(BIN)/python loadtests/bench_console.py

# Tracking events in one process (no gRPC) on SQLite and PostgreSQL: one a call, and in batches.
bench-tracking: $(GEN)
	$(BIN)/python loadtests/bench_tracking.py

# How fast replicas on one PostgreSQL hear each other's feedback: --bus database and --bus redis://.
bench-replicas: $(GEN)
	$(BIN)/python loadtests/bench_replicas.py

# Learning quality and speed against uniform, river and Vowpal Wabbit (the `bench` extra): data sets
# played once, a change of preferences, offers that arrive midway, late feedback (about 2.5 minutes).
bench-learning: $(GEN)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python loadtests/bench_learning.py

# What adaptation (forgetting, change tests, optimism, exploration by age) costs and buys: the
# service's learner defaults against adaptation off, every learning stream, 8 seeds (about 5 minutes).
bench-adaptation: $(GEN)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python loadtests/bench_adaptation.py

# nba evaluate against Open Bandit Pipeline on the Open Bandit Dataset sample inside obp 0.5.7.
# obp's declared pins (Python < 3.11, scikit-learn 1.1, scipy 1.9) no longer install: it is
# installed without them, with the few packages it imports (pandas before 3, tqdm, seaborn).
bench-obd: $(GEN)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' 'pandas<3' tqdm seaborn
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python obp==0.5.7
	$(BIN)/python loadtests/obd.py

# Channel traffic through locust against a fresh service on the sample catalogue: headless,
# CSV under loadtests/results/. LOAD_USERS and LOAD_TIME change the run.
LOAD_USERS ?= 20
LOAD_TIME  ?= 60s
loadtest: $(GEN)
	mkdir -p var loadtests/results
	rm -f var/loadtest.db var/loadtest.db-*
	NBA_DATABASE_URL=sqlite:///var/loadtest.db NBA_PORT=50061 NBA_METRICS_PORT=-1 NBA_LOG_LEVEL=warning \
		$(BIN)/nba serve & pid=$$!; trap "kill $$pid; wait $$pid" EXIT; \
	$(BIN)/locust -f loadtests/locustfile.py --headless --users $(LOAD_USERS) --spawn-rate 10 \
		--run-time $(LOAD_TIME) --host 127.0.0.1:50061 --csv loadtests/results/locust --only-summary

proto: $(GEN)

$(BIN)/python:
	@echo "creating the virtualenv $(VENV) with $(PYTHON)..."
	@$(PYTHON) -m venv $(VENV)

# pip's own output goes to a log, shown only when it fails: a first install is quiet for a minute.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "installing dependencies into $(VENV) (the first time takes about a minute; pip's log: $(VENV)/install.log)..."
	@$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip > $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "make: upgrading pip failed; the whole log is $(VENV)/install.log"; exit 1; }
	@$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]' >> $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "make: installing failed; the whole log is $(VENV)/install.log"; exit 1; }
	@# numba compiles the kernels once and caches them beside the code: here, once, rather than
	@# in every process that starts before the cache exists (a suite's or --workers' first ones)
	@echo "compiling the slot draw and the context pass (numba, about ten seconds, once)..."
	@$(BIN)/python -c 'import bandit.kernels, nba.service.wire' >> $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "make: compiling the kernels failed; the whole log is $(VENV)/install.log"; exit 1; }
	@touch $@
	@echo "installed"

nba/v1/%_pb2.py: proto/nba/v1/%.proto $(STAMP)
	@echo "generating the gRPC code of $<"
	@$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
		--include_source_info --descriptor_set_out=nba/v1/$*.binpb $<

clean:
	rm -rf $(VENV) nba/v1/*_pb2*.py nba/v1/*_pb2.pyi nba/v1/*.binpb *.egg-info
