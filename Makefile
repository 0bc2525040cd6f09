# qvm-remote: build, test, demo and benchmarks. `make help` lists the targets.

CARGO ?= cargo
PREFIX ?= /usr
DESTDIR ?=

.PHONY: all build release test demo demo-stop bench bench-crypto fuzz attack crash fmt clippy clean help

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
	@echo "make attack        the hostile-VM campaign table (short form runs in make test)"
	@echo "make crash         200 daemon SIGKILLs at random moments: every job ran at most once"
	@echo "make help-install  static client, reproducible release, install, packaging targets"

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

# The VMs run the static client, as `make install-vm` installs it.
bench: static
	QVM_REMOTE_BENCH_CLIENT=$(STATIC_DIR)/qvm-remote \
		$(CARGO) test --release --test bench -- --ignored --nocapture --test-threads 1

attack:
	$(CARGO) build --release --examples
	$(CARGO) test --release --test attack -- --ignored --nocapture --test-threads 1

crash:
	$(CARGO) test --release --test crash -- --ignored --nocapture --test-threads 1

FUZZ_ITERS ?= 300000

fuzz:
	QVM_FUZZ_ITERS=$(FUZZ_ITERS) QVM_FUZZ_SEED=$$(date +%s) $(CARGO) test --release --test fuzz -- --nocapture

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean

# --- Static client, reproducible release, dom0 bundle, install, packaging ---------------
# `make help-install` lists these targets; README.md, "Install on Qubes OS", uses them.

.PHONY: help-install static static-dom0 dom0-bundle print-hash repro \
	install-vm install-dom0 install-salt uninstall-vm uninstall-dom0 uninstall-salt \
	dist rpm deb

# The one version number lives in Cargo.toml; every package file repeats it and
# tests/install.rs checks that they agree.
VERSION := $(shell sed -n 's/^version = "\([^"]*\)"$$/\1/p' $(CURDIR)/Cargo.toml | head -n 1)
LIBC_VERSION := $(shell sed -n '/^name = "libc"$$/{n;s/^version = "\([^"]*\)"$$/\1/p;}' $(CURDIR)/Cargo.lock)
TARGET_TRIPLE ?= x86_64-unknown-linux-gnu
CARGO_HOME ?= $(HOME)/.cargo
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
UNITDIR ?= $(LIBDIR)/systemd/system
PRESETDIR ?= $(LIBDIR)/systemd/system-preset
DOCDIR ?= $(PREFIX)/share/doc/qvm-remote
SYSCONFDIR ?= /etc
SALTDIR ?= /srv/salt

# Build paths are mapped to fixed names, so the bytes do not depend on where the tree
# or the cargo cache sit: two builds anywhere give the same SHA-256.
REPRO_RUSTFLAGS := --remap-path-prefix=$(CURDIR)=/build/qvm-remote --remap-path-prefix=$(CARGO_HOME)=/cargo
# The VM client: static glibc and not position-independent, so the ELF has neither an
# interpreter (PT_INTERP) nor a dynamic section (PT_DYNAMIC).
STATIC_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static $(REPRO_RUSTFLAGS)
# The dom0 binary: static-pie, no interpreter and no shared library (it runs in any
# dom0 whatever glibc the building VM has), and it keeps ASLR.
STATIC_PIE_RUSTFLAGS := -C target-feature=+crt-static $(REPRO_RUSTFLAGS)
STATIC_TARGET_DIR ?= $(CURDIR)/target/static-build
STATIC_DIR := $(CURDIR)/target/static
STATIC_MAX_BYTES := 2097152
DOM0_BIN ?= $(STATIC_DIR)/qvm-remote-dom0
CLIENT_BIN ?= $(STATIC_DIR)/qvm-remote
BUNDLE := $(CURDIR)/target/qvm-remote-dom0.tar

help-install:
	@echo "make static        the VM client as a static executable (target/static/qvm-remote, <= 2 MiB)"
	@echo "make static-dom0   the dom0 binary as a static-pie executable (target/static/qvm-remote-dom0)"
	@echo "make release       both binaries, optimised and reproducible (target/release)"
	@echo "make repro         two clean release builds in different paths must give the same SHA-256"
	@echo "make print-hash    (in the VM) builds the dom0 bundle and prints what install-dom0.sh checks"
	@echo "make install-vm    installs the static client: DESTDIR, PREFIX (AppVM: PREFIX=/usr/local)"
	@echo "make install-dom0  installs binary, units, preset; config, policy, keys dir only if absent"
	@echo "make install-salt  installs the Salt formula and the client it copies into VMs"
	@echo "make uninstall-vm | uninstall-dom0 | uninstall-salt   (config, policy and keys stay)"
	@echo "make dist | rpm | deb    source tarball, RPMs (VM + dom0), Debian package (VM)"

# Reproducible: `make release` twice, anywhere, gives the same bytes.
release: export RUSTFLAGS = $(REPRO_RUSTFLAGS)

static:
	RUSTFLAGS='$(STATIC_RUSTFLAGS)' $(CARGO) build --release --locked \
		--target $(TARGET_TRIPLE) --target-dir $(STATIC_TARGET_DIR)/vm --bin qvm-remote
	install -d $(STATIC_DIR)
	install -m 0755 $(STATIC_TARGET_DIR)/vm/$(TARGET_TRIPLE)/release/qvm-remote $(STATIC_DIR)/qvm-remote
	@size=$$(stat -c %s $(STATIC_DIR)/qvm-remote); \
	echo "$(STATIC_DIR)/qvm-remote: $$size bytes"; \
	[ $$size -le $(STATIC_MAX_BYTES) ] || { echo "larger than 2 MiB" >&2; exit 1; }

static-dom0:
	RUSTFLAGS='$(STATIC_PIE_RUSTFLAGS)' $(CARGO) build --release --locked \
		--target $(TARGET_TRIPLE) --target-dir $(STATIC_TARGET_DIR)/dom0 --bin qvm-remote-dom0
	install -d $(STATIC_DIR)
	install -m 0755 $(STATIC_TARGET_DIR)/dom0/$(TARGET_TRIPLE)/release/qvm-remote-dom0 $(STATIC_DIR)/qvm-remote-dom0

dom0-bundle: static-dom0
	packaging/mkbundle.sh $(BUNDLE) $(DOM0_BIN)

# Run in the VM. The hash is what install-dom0.sh in dom0 asks for.
print-hash: dom0-bundle
	@echo
	@echo "dom0 bundle:     $(BUNDLE)"
	@echo "SHA-256:         $$(sha256sum < $(BUNDLE) | cut -d' ' -f1)"
	@echo "install-dom0.sh: $$(sha256sum < install-dom0.sh | cut -d' ' -f1)"
	@echo
	@echo "In dom0 (VM is this VM's name):"
	@echo "  qvm-run --pass-io --no-gui VM 'cat $(CURDIR)/install-dom0.sh' > install-dom0.sh"
	@echo "  sha256sum install-dom0.sh    # compare, then read it"
	@echo "  sudo bash install-dom0.sh VM --from $(BUNDLE)"

repro:
	$(CARGO) test --test install -- --nocapture --exact release_builds_are_reproducible

install-vm:
	@test -x $(CLIENT_BIN) || { echo "no $(CLIENT_BIN): run make static first" >&2; exit 1; }
	@[ -d $(DESTDIR)$(BINDIR) ] || install -d -m 0755 $(DESTDIR)$(BINDIR)
	install -m 0755 $(CLIENT_BIN) $(DESTDIR)$(BINDIR)/qvm-remote

# Config, policy and the keys dir are created only where absent: never overwritten.
install-dom0:
	@test -x $(DOM0_BIN) || { echo "no $(DOM0_BIN): run make static-dom0 first" >&2; exit 1; }
	@for d in $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/qvm-remote $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(PRESETDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/qubes; do \
		[ -d $$d ] || install -d -m 0755 $$d; done
	install -m 0755 $(DOM0_BIN) $(DESTDIR)$(BINDIR)/qvm-remote-dom0
	install -m 0755 packaging/dom0/qvm-remote-provision $(DESTDIR)$(LIBDIR)/qvm-remote/qvm-remote-provision
	install -m 0644 packaging/systemd/qvm-remote-dom0.service packaging/systemd/qvm-remote-panel.service $(DESTDIR)$(UNITDIR)/
	install -m 0644 packaging/systemd/30-qvm-remote.preset $(DESTDIR)$(PRESETDIR)/
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	@for f in remote.conf remote-policy; do \
		t=$(DESTDIR)$(SYSCONFDIR)/qubes/$$f; \
		if [ -e $$t ] || [ -L $$t ]; then echo "keeping existing $$t"; \
		else echo "install -m 0644 packaging/dom0/$$f $$t"; install -m 0644 packaging/dom0/$$f $$t; fi; done
	@[ -d $(DESTDIR)$(SYSCONFDIR)/qubes/remote.d ] || install -d -m 0700 $(DESTDIR)$(SYSCONFDIR)/qubes/remote.d

install-salt:
	@test -x $(CLIENT_BIN) || { echo "no $(CLIENT_BIN): run make static first" >&2; exit 1; }
	install -d -m 0755 $(DESTDIR)$(SALTDIR)/qvm-remote/files
	install -m 0644 packaging/salt/qvm-remote/map.jinja packaging/salt/qvm-remote/*.sls $(DESTDIR)$(SALTDIR)/qvm-remote/
	install -m 0755 $(CLIENT_BIN) $(DESTDIR)$(SALTDIR)/qvm-remote/files/qvm-remote

uninstall-vm:
	rm -f $(DESTDIR)$(BINDIR)/qvm-remote

# Leaves config, policy, keys, state and the audit log.
uninstall-dom0:
	rm -f $(DESTDIR)$(BINDIR)/qvm-remote-dom0 $(DESTDIR)$(LIBDIR)/qvm-remote/qvm-remote-provision \
		$(DESTDIR)$(UNITDIR)/qvm-remote-dom0.service $(DESTDIR)$(UNITDIR)/qvm-remote-panel.service \
		$(DESTDIR)$(PRESETDIR)/30-qvm-remote.preset $(DESTDIR)$(DOCDIR)/README.md
	-rmdir $(DESTDIR)$(LIBDIR)/qvm-remote $(DESTDIR)$(DOCDIR) 2>/dev/null

uninstall-salt:
	rm -rf $(DESTDIR)$(SALTDIR)/qvm-remote

DIST_NAME := qvm-remote-$(VERSION)
DIST_DIR ?= $(CURDIR)/target/dist
DIST_FILES := .qubesbuilder version Cargo.toml Cargo.lock Makefile README.md ARCHITECTURE.md \
	install-dom0.sh hmac packaging src tests web

dist:
	install -d $(DIST_DIR)
	LC_ALL=C tar --create --format=gnu --sort=name --owner=0 --group=0 --numeric-owner \
		--exclude=target --exclude='*.orig' --exclude='*.rej' --exclude='*~' \
		--transform 's,^,$(DIST_NAME)/,' $(DIST_FILES) | gzip -9n > $(DIST_DIR)/$(DIST_NAME).tar.gz
	@echo "$(DIST_DIR)/$(DIST_NAME).tar.gz"

RPMBUILD ?= rpmbuild
RPM_TOPDIR ?= $(CURDIR)/target/rpmbuild
RPMBUILD_FLAGS ?=
# Where systemd's RPM macros are missing (Debian CI), a stand-in with the same shape.
RPM_MACROS := $(if $(shell rpm --eval '%{?_unitdir}' 2>/dev/null),,--load $(CURDIR)/packaging/rpm/macros.systemd-standin)

rpm: dist
	install -d $(RPM_TOPDIR)/SOURCES
	cp $(DIST_DIR)/$(DIST_NAME).tar.gz $(RPM_TOPDIR)/SOURCES/
	$(CARGO) fetch --locked
	cp "$$(ls $(CARGO_HOME)/registry/cache/*/libc-$(LIBC_VERSION).crate | head -n 1)" $(RPM_TOPDIR)/SOURCES/
	$(RPMBUILD) -bb $(RPM_MACROS) --define '_topdir $(RPM_TOPDIR)' $(RPMBUILD_FLAGS) packaging/rpm/qvm-remote.spec
	$(RPMBUILD) -bb $(RPM_MACROS) --define '_topdir $(RPM_TOPDIR)' $(RPMBUILD_FLAGS) packaging/rpm/qvm-remote-dom0.spec

DEB_BUILD_DIR ?= $(CURDIR)/target/debbuild
DEB_FLAGS ?=

deb: dist
	rm -rf $(DEB_BUILD_DIR) && install -d $(DEB_BUILD_DIR)
	tar -xzf $(DIST_DIR)/$(DIST_NAME).tar.gz -C $(DEB_BUILD_DIR)
	cp -r packaging/debian $(DEB_BUILD_DIR)/$(DIST_NAME)/debian
	$(CARGO) fetch --locked
	cp "$$(ls $(CARGO_HOME)/registry/cache/*/libc-$(LIBC_VERSION).crate | head -n 1)" $(DEB_BUILD_DIR)/
	cd $(DEB_BUILD_DIR)/$(DIST_NAME) && dpkg-buildpackage -b -us -uc $(DEB_FLAGS)

# The admin panel (src/panel/): its load figure, and its browser test on its own.
.PHONY: bench-panel panel-browser

# /health under 64 keep-alive connections for 10 s: p50/p99, errors, threads.
bench-panel:
	$(CARGO) test --release --test panel bench_health_under_64_keep_alive_connections -- --ignored --nocapture --test-threads 1

# The twelve tabs in headless Chromium; screenshots land in target/panel-screens/.
panel-browser:
	$(CARGO) test --test panel_browser -- --nocapture
