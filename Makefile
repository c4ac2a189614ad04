# ferry: kernel module, library, tests.  See README.md.
#
#   make                 build what this machine can build
#   make module [KDIR=]  build kmod/ferry.ko against a kernel build tree
#   make check           install deps, build, run every test (host + qemu)
#   make clean

BUILD := build
CC ?= cc

# Default kernel tree: the running kernel's, else the newest Debian headers
# installed under /usr/src.
KDIR ?= $(firstword $(wildcard /lib/modules/$(shell uname -r)/build) \
	$(shell ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1))

# The kselftest harness is unpacked from Debian's linux-source at build time.
KSFT_DIR = $(shell scripts/ksft.sh)

# The harness's own macros trip -Wunused-parameter and -Wsign-compare (the
# kernel builds selftests with -Wall only); everything else stays an error.
TEST_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter \
	-Wno-sign-compare -static -pthread -Iinclude/uapi

KMOD_TESTS := $(patsubst tests/kmod/%.c,$(BUILD)/tests/kmod/%,$(wildcard tests/kmod/*.c))
UAPI_TESTS := $(patsubst tests/uapi/%.c,$(BUILD)/tests/uapi/%,$(wildcard tests/uapi/*.c))

.PHONY: all module module-if-possible build-tests deps check clean

all: module-if-possible

module:
	@if [ -z "$(KDIR)" ] || [ ! -d "$(KDIR)" ]; then \
		echo "ferry: no kernel build tree; install linux-headers-$$(uname -r) or pass KDIR=<tree>" >&2; \
		exit 1; fi
	$(MAKE) -C $(KDIR) M=$(CURDIR) modules

module-if-possible:
	@if [ -n "$(KDIR)" ] && [ -d "$(KDIR)" ]; then \
		$(MAKE) --no-print-directory module; \
	else \
		echo "# no kernel build tree here: skipping ferry.ko (make module KDIR=...)"; fi

deps:
	@scripts/deps.sh

build-tests: $(KMOD_TESTS) $(UAPI_TESTS)

$(BUILD)/tests/kmod/%: tests/kmod/%.c tests/kmod/ferry_test.h include/uapi/linux/ferry.h
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) -I$(KSFT_DIR) -o $@ $<

$(BUILD)/tests/uapi/%: tests/uapi/%.c include/uapi/linux/ferry.h
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) -I$(KSFT_DIR) -o $@ $<

check:
	@scripts/check.sh

clean:
	rm -rf $(BUILD)
	@if [ -n "$(KDIR)" ] && [ -d "$(KDIR)" ]; then $(MAKE) -C $(KDIR) M=$(CURDIR) clean; fi
