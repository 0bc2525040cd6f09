# qvm-remote: build, test, demo and benchmarks. `make help` lists the targets.

CARGO ?= cargo
PREFIX ?= /usr
DESTDIR ?=

.PHONY: all build release test demo demo-stop bench bench-crypto fuzz fmt clippy clean help

all: build

help:
	@echo "make build         debug build of both binaries"
	@echo "make release       optimised build (target/release)"
	@echo "make test          the whole test suite (what CI runs)"
	@echo "make demo          simulated dom0 + two VMs, runs a few commands, leaves it running"
	@echo "make demo-stop     stops the demo daemon"
	@echo "make bench         pipeline benchmark table (latency, spawns, RSS)"
	@echo "make bench-crypto  SHA-256 throughput table beside openssl speed"
	@echo "make fuzz          the randomised parser tests, far longer than in make test"

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

test:
	$(CARGO) test --workspace

bench-crypto:
	$(CARGO) run --release -p qvm-remote-hmac --example bench-crypto

DEMO_DIR ?= /tmp/qvm-remote-demo

demo: build
	tests/sim/demo.sh start $(CURDIR)/target/debug $(DEMO_DIR)

demo-stop:
	tests/sim/demo.sh stop $(DEMO_DIR)

bench:
	$(CARGO) test --release --test bench -- --ignored --nocapture --test-threads 1

FUZZ_ITERS ?= 300000

fuzz:
	QVM_FUZZ_ITERS=$(FUZZ_ITERS) QVM_FUZZ_SEED=$$(date +%s) $(CARGO) test --release --test fuzz -- --nocapture

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
