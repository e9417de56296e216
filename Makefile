# layerfs build.  `make` builds bin/layerfs; `make check` runs every test;
# `make bench` runs the benchmarks; `make deps` installs the Debian packages
# the build, the tests and the benchmarks need (other targets call it only
# when something is missing).

CC      ?= cc
CSTD    := -std=c17 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
OPT     ?= -O2 -g
SAN     ?=
CFLAGS  += $(CSTD) $(WARN) $(OPT) $(SAN) -Iinclude -Ifs -pthread
LDFLAGS += $(SAN) -pthread

FUSE_CFLAGS := $(shell pkg-config --cflags fuse3 2>/dev/null)
FUSE_LIBS   := $(shell pkg-config --libs fuse3 2>/dev/null)
TOOL_CFLAGS := $(shell pkg-config --cflags libarchive jansson libcrypto 2>/dev/null)
TOOL_LIBS   := $(shell pkg-config --libs libarchive jansson libcrypto 2>/dev/null)

# Debian packages: build, tests (python3, attr, kernel overlay peer via
# util-linux mount, fuse-overlayfs peer) and benchmarks.
DEB_PKGS := gcc make pkg-config libfuse3-dev fuse3 uthash-dev libssl-dev \
            libarchive-dev libjansson-dev python3 attr fuse-overlayfs util-linux \
            e2fsprogs zstd umoci podman runc skopeo busybox-static uidmap acl
DEPS_STAMP := build/.deps-ok

# The union core: no FUSE in it (enforced by `core-is-fuse-free`).
CORE_SRCS := fs/layer.c fs/whiteout.c fs/dirindex.c fs/node.c fs/lookup.c \
             fs/readdir.c fs/inomap.c fs/options.c fs/pathbuf.c fs/fs.c \
             fs/file.c fs/xattr.c fs/layercache.c fs/explain.c \
             fs/upper.c fs/copyup.c fs/dir.c fs/inode.c fs/stats.c fs/owner.c
FUSE_SRCS := fs/fuse_ops.c fs/fuse_main.c
CORE_OBJS := $(CORE_SRCS:%.c=build/%.o)
FUSE_OBJS := $(FUSE_SRCS:%.c=build/%.o)
TOOL_SRCS := $(wildcard tools/*.c)
TOOL_OBJS := $(TOOL_SRCS:%.c=build/%.o)
UNIT_SRCS := $(wildcard tests/unit/*.c)
BENCH_C   := $(wildcard benchmarks/*.c)

.PHONY: all deps check unit bench example clean core-is-fuse-free asan

all: $(DEPS_STAMP) bin/layerfs bin/layerctl $(BENCH_C:benchmarks/%.c=build/bench/%)

# Install only what is missing; the stamp records that the check passed.
$(DEPS_STAMP):
	@mkdir -p build
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing $$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to install: $$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi
	@touch $@

deps:
	@rm -f $(DEPS_STAMP)
	@$(MAKE) --no-print-directory $(DEPS_STAMP)

build/fs/fuse_%.o: fs/fuse_%.c $(wildcard include/*.h fs/*.h) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(FUSE_CFLAGS) -c $< -o $@

build/tools/%.o: tools/%.c $(wildcard tools/*.h include/*.h) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(TOOL_CFLAGS) -c $< -o $@

# The tools link the union core (never the FUSE adapter).
bin/layerctl: $(TOOL_OBJS) build/liblayerfs-core.a
	@mkdir -p bin
	$(CC) $(LDFLAGS) -o $@ $^ $(TOOL_LIBS)

build/%.o: %.c $(wildcard include/*.h fs/*.h) | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

build/liblayerfs-core.a: $(CORE_OBJS)
	ar rcs $@ $^

bin/layerfs: $(FUSE_OBJS) build/liblayerfs-core.a
	@mkdir -p bin
	$(CC) $(LDFLAGS) -o $@ $^ $(FUSE_LIBS)

build/unit_tests: $(UNIT_SRCS) build/liblayerfs-core.a $(wildcard tests/unit/*.h)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $(UNIT_SRCS) build/liblayerfs-core.a $(LDFLAGS)

build/bench/%: benchmarks/%.c build/liblayerfs-core.a
	@mkdir -p build/bench
	$(CC) $(CFLAGS) -o $@ $< build/liblayerfs-core.a $(LDFLAGS)

# The core must compile without libfuse: no core file may include a FUSE header.
core-is-fuse-free:
	@! grep -lE '^#[[:space:]]*include.*fuse' $(CORE_SRCS) fs/layerfs_i.h include/*.h | grep . \
	  || { echo "core files above include FUSE headers" >&2; exit 1; }

check: all build/unit_tests core-is-fuse-free
	@tests/run

unit: build/unit_tests
	@build/unit_tests

bench: all
	@build/bench/corebench
	@echo
	@benchmarks/importbench.py
	@echo
	@benchmarks/run
	@echo
	@benchmarks/writebench.py
	@echo
	@benchmarks/podmanbench.py

example: all
	@tests/example.sh

# The daemon has no stderr once mounted: sanitizer reports go to files in
# SANITIZER_LOG_DIR, and tests/run fails on any it finds there.
SANLOG := /tmp/layerfs-sanitizers
asan:
	$(MAKE) clean
	rm -rf $(SANLOG) && mkdir -p $(SANLOG)
	SANITIZER_LOG_DIR=$(SANLOG) \
	ASAN_OPTIONS=log_path=$(SANLOG)/asan:detect_leaks=1 \
	UBSAN_OPTIONS=log_path=$(SANLOG)/ubsan:print_stacktrace=1 \
	$(MAKE) SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" OPT="-O1 -g" check

clean:
	rm -rf build/fs build/tools build/tests build/*.a build/unit_tests build/bench bin
