# shmix: build, test, demo and install. `make test` and `make demo` install what they need.
SHELL := /bin/bash
PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
PROFILE ?= release
ALSA_LIBDIR := $(shell pkg-config --variable=libdir alsa 2>/dev/null || echo /usr/lib/x86_64-linux-gnu)
PLUGIN_DIR ?= $(ALSA_LIBDIR)/alsa-lib
CONF_DIR ?= /etc/alsa/conf.d
# systemd: systemd-socket-activate and systemd-analyze (service tests); util-linux: setpriv
# (access tests run clients as another user); libdbus-1-dev: shmixd asks rtkit over D-Bus;
# dbus-daemon: a private system bus for the rtkit test.
DEB_PACKAGES := libasound2-dev libclang-dev clang pkg-config alsa-utils sox strace bc systemd util-linux \
	gstreamer1.0-tools gstreamer1.0-alsa gstreamer1.0-plugins-base libportaudio2 portaudio19-dev \
	libsdl2-dev libopenal-dev libopenal1 ffmpeg tmux libdbus-1-dev dbus-daemon

.PHONY: all deps build build-release test lint loom demo install uninstall clean

all: build

# Debian packages the build and the tests need (skipped when all are present).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest

# Also shmixd with its allocation-counting allocator (tests/rt_audit.rs), in a target dir of its
# own: built in the workspace, the feature would change the shmixd every other test runs.
build: deps
	$(CARGO) build --workspace
	CARGO_TARGET_DIR=target/rt-audit $(CARGO) build -p shmix-daemon --features rt-audit

build-release: deps
	$(CARGO) build --workspace --release

# Formatting, clippy on every target (benches included, so they compile), the docs without a
# warning, and the fuzz targets (their own workspace) type-checked.
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	$(CARGO) check --manifest-path fuzz/Cargo.toml --bins

# The loom model of the wake protocol (its own target dir: different cfg).
loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom $(CARGO) test -p shmix-shared --release --test loom

# The whole suite: unit, property, loom and integration tests (the latter need the built
# plugin, daemon and virtual card, hence the build first).
test: build
	@# The build leaves gigabytes of dirty pages; written back during the run they load the
	@# disk and the kernel under the real-time tests. Flush them first.
	sync
	$(CARGO) nextest run --workspace --no-fail-fast
	$(MAKE) loom

demo: build-release
	PROFILE=release scripts/demo.sh

# Installs what `make build-release` built (run that first as yourself: under sudo there is
# usually no cargo). BUILD_DIR picks another build (the tests install their debug build).
BUILD_DIR ?= target/release
BINDIR ?= $(PREFIX)/bin
DOCDIR ?= $(PREFIX)/share/doc/shmix
SYSTEMD_USER_DIR ?= $(PREFIX)/lib/systemd/user
SYSTEMD_SYSTEM_DIR ?= $(PREFIX)/lib/systemd/system
SYSUSERS_DIR ?= $(PREFIX)/lib/sysusers.d
RELEASE_FILES := $(BUILD_DIR)/libasound_module_pcm_shmix.so $(BUILD_DIR)/shmixd
UNIT_SUBST := sed -e 's|@bindir@|$(BINDIR)|g' -e 's|@docdir@|$(DOCDIR)|g'
install:
	@for f in $(RELEASE_FILES); do [ -e $$f ] || { echo "$$f is missing: run 'make build-release' first" >&2; exit 1; }; done
	install -d $(DESTDIR)$(PLUGIN_DIR) $(DESTDIR)$(CONF_DIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(DOCDIR) \
	           $(DESTDIR)$(SYSTEMD_USER_DIR) $(DESTDIR)$(SYSTEMD_SYSTEM_DIR) $(DESTDIR)$(SYSUSERS_DIR)
	install -m 0644 $(BUILD_DIR)/libasound_module_pcm_shmix.so $(DESTDIR)$(PLUGIN_DIR)/
	install -m 0644 asound.conf.d/50-shmix.conf $(DESTDIR)$(CONF_DIR)/
	install -m 0755 $(BUILD_DIR)/shmixd $(DESTDIR)$(BINDIR)/
	@# shmixctl comes with the control issue; install it whenever it was built.
	if [ -e $(BUILD_DIR)/shmixctl ]; then install -m 0755 $(BUILD_DIR)/shmixctl $(DESTDIR)$(BINDIR)/; \
	else echo "note: $(BUILD_DIR)/shmixctl not built; not installed"; fi
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/
	for u in shmixd.service shmixd.socket; do \
		$(UNIT_SUBST) systemd/user/$$u > $(DESTDIR)$(SYSTEMD_USER_DIR)/$$u && chmod 0644 $(DESTDIR)$(SYSTEMD_USER_DIR)/$$u || exit 1; done
	$(UNIT_SUBST) systemd/system/shmixd.service > $(DESTDIR)$(SYSTEMD_SYSTEM_DIR)/shmixd.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_SYSTEM_DIR)/shmixd.service
	install -m 0644 systemd/sysusers.d/shmixd.conf $(DESTDIR)$(SYSUSERS_DIR)/
	@echo "installed. Next steps (README: Install into a real system):"
	@echo "  per user, started on first use:  systemctl --user daemon-reload && systemctl --user enable --now shmixd.socket"
	@echo "  or system-wide for group audio:  systemd-sysusers && systemctl daemon-reload && systemctl enable --now shmixd.service"
	@echo "  make shmix the default device:   install -m 0644 asound.conf.d/99-shmix-default.conf $(DESTDIR)$(CONF_DIR)/"

# Removes everything `make install` put in place (and 99-shmix-default.conf if it was copied).
uninstall:
	rm -f $(DESTDIR)$(PLUGIN_DIR)/libasound_module_pcm_shmix.so \
	      $(DESTDIR)$(CONF_DIR)/50-shmix.conf $(DESTDIR)$(CONF_DIR)/99-shmix-default.conf \
	      $(DESTDIR)$(BINDIR)/shmixd $(DESTDIR)$(BINDIR)/shmixctl \
	      $(DESTDIR)$(DOCDIR)/README.md \
	      $(DESTDIR)$(SYSTEMD_USER_DIR)/shmixd.service $(DESTDIR)$(SYSTEMD_USER_DIR)/shmixd.socket \
	      $(DESTDIR)$(SYSTEMD_SYSTEM_DIR)/shmixd.service $(DESTDIR)$(SYSUSERS_DIR)/shmixd.conf
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null

clean:
	$(CARGO) clean
