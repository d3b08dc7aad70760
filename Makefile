# shmix: build, test, demo and install. `make test` and `make demo` install what they need.
SHELL := /bin/bash
PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
PROFILE ?= release
ALSA_LIBDIR := $(shell pkg-config --variable=libdir alsa 2>/dev/null || echo /usr/lib/x86_64-linux-gnu)
PLUGIN_DIR ?= $(ALSA_LIBDIR)/alsa-lib
CONF_DIR ?= /etc/alsa/conf.d
DEB_PACKAGES := libasound2-dev libclang-dev clang pkg-config alsa-utils sox strace bc \
	gstreamer1.0-tools gstreamer1.0-alsa gstreamer1.0-plugins-base libportaudio2 portaudio19-dev \
	libsdl2-dev libopenal-dev libopenal1 ffmpeg

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

build: deps
	$(CARGO) build --workspace

build-release: deps
	$(CARGO) build --workspace --release

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The loom model of the wake protocol (its own target dir: different cfg).
loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom $(CARGO) test -p shmix-shared --release --test loom

# The whole suite: unit, property, loom and integration tests (the latter need the built
# plugin, daemon and virtual card, hence the build first).
test: build
	$(CARGO) nextest run --workspace --no-fail-fast
	$(MAKE) loom

demo: build-release
	PROFILE=release scripts/demo.sh

# Installs what `make build-release` built (run that first as yourself: under sudo there is
# usually no cargo).
RELEASE_FILES := target/release/libasound_module_pcm_shmix.so target/release/shmixd
install:
	@for f in $(RELEASE_FILES); do [ -e $$f ] || { echo "$$f is missing: run 'make build-release' first" >&2; exit 1; }; done
	install -d $(DESTDIR)$(PLUGIN_DIR) $(DESTDIR)$(CONF_DIR) $(DESTDIR)$(PREFIX)/bin
	install -m 0644 target/release/libasound_module_pcm_shmix.so $(DESTDIR)$(PLUGIN_DIR)/
	install -m 0644 asound.conf.d/50-shmix.conf $(DESTDIR)$(CONF_DIR)/
	install -m 0755 target/release/shmixd $(DESTDIR)$(PREFIX)/bin/
	@echo "installed. To make shmix the default device:"
	@echo "  install -m 0644 asound.conf.d/99-shmix-default.conf $(DESTDIR)$(CONF_DIR)/"

uninstall:
	rm -f $(DESTDIR)$(PLUGIN_DIR)/libasound_module_pcm_shmix.so \
	      $(DESTDIR)$(CONF_DIR)/50-shmix.conf $(DESTDIR)$(CONF_DIR)/99-shmix-default.conf \
	      $(DESTDIR)$(PREFIX)/bin/shmixd

clean:
	$(CARGO) clean
