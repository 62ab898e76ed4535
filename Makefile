# viewcount: `make demo` and `make test` set up everything they need (idempotent, fast when
# nothing changed), then run. `make help` lists the rest.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
STATE := $(or $(VIEWCOUNT_STATE_DIR),.state)
JARS := $(STATE)/jars
BIN := $(VENV)/bin
PYFLINK_LIB = $(shell $(BIN)/python -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
UDF_SOURCES := $(shell find jvm/src jvm/resources -type f)
PYTEST_ARGS ?=

.PHONY: bench-cpu bench-live test-fast soak cluster-up cluster-down cluster-status test-cluster zookeeper superset superset-down help setup venv jars clickhouse up down status migrate demo test test-unit test-integration lint bench profile dagster clean web browser serve

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: venv jars clickhouse ## install everything: virtualenv, Python packages, Kafka and Flink jars, ClickHouse

venv: $(VENV)/.installed ## the virtualenv with the project and its dev tools
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

jars: $(JARS)/.kafka $(JARS)/.flink $(JARS)/.udf-deps $(JARS)/viewcount-udf.jar ## Kafka broker + tools and the Flink Kafka connector (Maven), our Flink functions (javac)
$(JARS)/.kafka: stack/pom.xml
	@command -v mvn >/dev/null || { echo "error: mvn not found: apt-get install -y maven"; exit 1; }
	rm -rf $(JARS)/kafka
	mvn -q -B -f stack/pom.xml -P kafka dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(abspath $(JARS))/kafka
	touch $@
$(JARS)/.flink: stack/pom.xml
	rm -rf $(JARS)/flink
	mvn -q -B -f stack/pom.xml -P flink dependency:copy-dependencies -DexcludeTransitive=true -DoutputDirectory=$(abspath $(JARS))/flink
	touch $@
$(JARS)/.udf-deps: stack/pom.xml
	rm -rf $(JARS)/udf-deps
	mvn -q -B -f stack/pom.xml -P udf dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$(abspath $(JARS))/udf-deps
	touch $@
$(JARS)/viewcount-udf.jar: $(UDF_SOURCES) $(VENV)/.installed $(JARS)/.udf-deps
	rm -rf $(STATE)/build/udf && mkdir -p $(STATE)/build/udf $(JARS)
	javac --release 17 -nowarn -cp '$(PYFLINK_LIB)/*:$(JARS)/udf-deps/*' -d $(STATE)/build/udf $(filter %.java,$(UDF_SOURCES))
	cp -r jvm/resources/. $(STATE)/build/udf/
	jar cf $@ -C $(STATE)/build/udf .
$(JARS)/profiler/libasyncProfiler.so: stack/pom.xml
	rm -rf $(JARS)/profiler && mkdir -p $(JARS)/profiler
	mvn -q -B -f stack/pom.xml -P profiler dependency:copy-dependencies -DoutputDirectory=$(abspath $(JARS))/profiler
	cd $(JARS)/profiler && unzip -o -j -q async-profiler-*.jar linux-x64/libasyncProfiler.so

zookeeper: ## Debian's zookeeper (apt), if missing: the cluster stack's ClickHouse replication
	@if [ ! -e /usr/share/java/zookeeper.jar ]; then \
	  echo "installing zookeeper from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; \
	fi

clickhouse: ## Debian's clickhouse-server and clickhouse-client (apt), if missing
	@if ! command -v clickhouse-server >/dev/null || ! command -v clickhouse-client >/dev/null; then \
	  echo "installing clickhouse-server and clickhouse-client from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client kcat >/dev/null; \
	fi

up: setup ## start Kafka and ClickHouse on loopback (idempotent), create topics, migrate
	$(BIN)/python -m pipelines.stack up
	$(BIN)/viewcount migrate

down: ## stop the services this project started
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m pipelines.stack down; fi

status: ## which services are running
	$(BIN)/python -m pipelines.stack status

migrate: venv ## apply pending ClickHouse migrations
	$(BIN)/viewcount migrate

demo: up web ## the reference night at 1:1000 through Kafka -> Flink -> ClickHouse, figures printed from ClickHouse
	$(BIN)/viewcount demo

test: lint up web browser ## lint (ruff), then every test: unit, integration, end-to-end and the live page in chromium, against the local stack
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: lint up ## the inner loop (under 3 minutes): unit and integration tests, no Flink job
	$(BIN)/python -m pytest -m "not e2e and not soak and not cluster" $(PYTEST_ARGS)

test-unit: venv jars ## unit tests only (no services)
	$(BIN)/python -m pytest -m "not integration and not e2e and not cluster" $(PYTEST_ARGS)

test-integration: up ## tests that need the services
	$(BIN)/python -m pytest -m "(integration or e2e) and not soak and not cluster" $(PYTEST_ARGS)

test-cluster: lint setup zookeeper ## tests/cluster/: the smoke test (a broker and a replica killed), the migrations' cluster shape, the night exact, the repairs shard by shard, the night with a TaskManager, a replica and a broker killed during its run; leaves running only what it found running
	$(BIN)/python -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

bench: up ## benchmarks (bench/results/, under 20 min): the pipeline, its stages and peers at 1:2000, the backfill at 1:200
	$(BIN)/python -m bench.pipeline --scale 2000 --runs 3
	$(BIN)/python -m bench.backfill --scale 200 --runs 3
	$(BIN)/python -m bench.collector --seconds 8
	$(BIN)/python -m bench.dashboards --scale 100 --unrelated-posts 1000000

bench-cpu: up ## whole-stack CPU per record in catch-up at 1:400, ours beside the engine's ceiling: bench/results/cpu.*
	$(BIN)/python -m bench.cpu --scale 400

bench-live: up ## the live pipeline under the night's shape at 40k, 60k, 80k events/s, 5 min each (~20 min): bench/results/live.*
	$(BIN)/python -m bench.live --rates 40000 60000 80000

profile: up $(JARS)/profiler/libasyncProfiler.so ## flame graphs of one bounded run (async-profiler on the job's JVM, py-spy on Python): bench/results/profile*
	$(BIN)/python -m bench.profile --scale 2000

cluster-up: setup zookeeper ## the cluster stack on loopback (idempotent): ZooKeeper, 3 Kafka nodes, 4 ClickHouse (2 shards x 2 replicas), Flink (docs/scale-out.md)
	$(BIN)/python -m pipelines.cluster up

cluster-down: ## stop the cluster stack
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m pipelines.cluster down; fi

cluster-status: ## the cluster stack's nodes: pid, ports, resident memory
	$(BIN)/python -m pipelines.cluster status

soak: up ## the long fault runs (20 kills, broker and ClickHouse outages) and the 10-minute soak: docs/reliability.md
	$(BIN)/python -m pytest -m soak $(PYTEST_ARGS)
	$(BIN)/python -m bench.soak --minutes 10

lint: venv ## ruff
	$(BIN)/ruff check pipelines tests dagster_project bench

dagster: up ## the Dagster UI on 127.0.0.1:3000 against the local stack (backfills, hourly reconciliation)
	$(BIN)/viewcount dagster

web: node_modules/.installed ## the live page's chart library from npm (package.json), served locally: no CDN
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: apt-get install -y npm"; exit 1; }
	npm ci --no-audit --no-fund --silent
	touch $@

browser: ## Debian's chromium and chromium-driver (apt), if missing: the live page's browser test
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing chromium and chromium-driver from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

serve: up web ## the dashboards API and live page on http://127.0.0.1:8000/ (OpenAPI at /docs)
	$(BIN)/viewcount serve

# Apache Superset in a virtualenv of its own (its pins clash with the project's), under the state folder.
SUPERSET_VENV := $(STATE)/superset/venv
superset: up browser $(SUPERSET_VENV)/.installed ## Apache Superset on http://127.0.0.1:8088/: the subject dashboards over the rollups, checked in chromium
	$(BIN)/python -m pipelines.serve.superset up
$(SUPERSET_VENV)/.installed: stack/superset/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11"; exit 1; }
	test -x $(SUPERSET_VENV)/bin/python || $(PYTHON) -m venv $(SUPERSET_VENV)
	$(SUPERSET_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SUPERSET_VENV)/bin/python -m pip install --quiet -r stack/superset/requirements.txt
	touch $@

superset-down: ## stop Superset
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m pipelines.serve.superset down; fi

clean: down superset-down ## stop services and delete all local state (data, jars, venvs)
	rm -rf $(STATE) $(VENV)
