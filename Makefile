# ferry: kernel module, library, tests.  See README.md.
#
#   make                 build what this machine can build
#   make module [KDIR=]  build kmod/ferry.ko against a kernel build tree
#   make check           install deps, build, run every test (host + qemu)
#   make demo            install deps, build, run the main job (ferry-demo)
#   make install         [PREFIX=/usr/local] [DESTDIR=]
#   make dkms-install    the module under DKMS (rebuilt on kernel upgrades)
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

# CUDA's headers (types and prototypes only: libcuda is dlopened at run time).
# Only the library and what links it need them: the module's targets
# (module, dkms-*, install-udev) build on a host without CUDA.
CUDA_INC ?= /usr/local/cuda/include
NO_CUDA_GOALS := module dkms-source dkms-install install-udev clean deps version
ifneq ($(filter-out $(NO_CUDA_GOALS),$(or $(MAKECMDGOALS),all)),)
ifeq ($(wildcard $(CUDA_INC)/cuda.h),)
$(error CUDA headers not found at $(CUDA_INC)/cuda.h; install CUDA or set CUDA_INC=)
endif
endif

# libferry: C11, warnings are errors.
CFLAGS ?= -O2 -g
LIB_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fPIC -pthread \
	-Iuserspace/include -Iuserspace/lib -Iinclude/uapi -isystem $(CUDA_INC) $(CFLAGS)
LIB_SRCS := $(wildcard userspace/lib/*.c)
LIB_OBJS := $(patsubst userspace/lib/%.c,$(BUILD)/lib/%.o,$(LIB_SRCS))
LIB_HDRS := $(wildcard userspace/include/*.h userspace/lib/*.h) include/uapi/linux/ferry.h
LIB_A := $(BUILD)/libferry.a
LIB_SO := $(BUILD)/libferry.so.0
# Test binaries are static so the same files run on the host and in the VM.
LIB_LDLIBS := -l:liburing.a -l:libnuma.a -pthread

KMOD_TESTS := $(patsubst tests/kmod/%.c,$(BUILD)/tests/kmod/%,$(wildcard tests/kmod/*.c))
UAPI_TESTS := $(patsubst tests/uapi/%.c,$(BUILD)/tests/uapi/%,$(wildcard tests/uapi/*.c))
LIB_TESTS := $(patsubst tests/userspace/%.c,$(BUILD)/tests/userspace/%,$(wildcard tests/userspace/*.c))
GPU_TESTS := $(patsubst tests/gpu/%.c,$(BUILD)/tests/gpu/%,$(wildcard tests/gpu/*.c))
TOOL_TESTS := $(patsubst tests/tools/%.c,$(BUILD)/tests/tools/%,$(wildcard tests/tools/*.c))
ABI_TESTS := $(patsubst tests/abi/%.c,$(BUILD)/tests/abi/%,$(wildcard tests/abi/*.c))

.PHONY: all lib tools python module module-if-possible build-tests deps check clean demo install version abi-baseline \
	dkms-source dkms-install install-udev sanitize-tests fuzz fuzz-build

all: lib tools python module-if-possible

lib: $(LIB_A) $(LIB_SO)

# The Python package (userspace/python/ferry, ctypes over libferry.so.0):
# importable from build/python with nothing installed; it carries the
# library it was built with (and libnuma, which hosts without it lack).
PY_SRCS := $(wildcard userspace/python/ferry/*.py)
PY_OUT := $(BUILD)/python/ferry
PY_FILES := $(patsubst userspace/python/ferry/%,$(PY_OUT)/%,$(PY_SRCS)) \
	$(PY_OUT)/_forksafe.so $(PY_OUT)/libferry.so.0 $(PY_OUT)/_vendor/libnuma.so.1
python: $(PY_FILES)

$(PY_OUT)/%.py: userspace/python/ferry/%.py
	@mkdir -p $(@D)
	cp $< $@

# No Python headers: stable-ABI functions resolved against the interpreter.
$(PY_OUT)/_forksafe.so: userspace/python/ferry/_forksafe.c
	@mkdir -p $(@D)
	$(CC) -std=c11 -shared -fPIC -O2 -g -Wall -Wextra -Werror -o $@ $< -ldl

$(PY_OUT)/libferry.so.0: $(LIB_SO)
	@mkdir -p $(@D)
	cp $< $@

$(PY_OUT)/_vendor/libnuma.so.1:
	@mkdir -p $(@D)
	cp -L $$($(CC) -print-file-name=libnuma.so.1) $@ 2>/dev/null || \
		cp -L /usr/lib/x86_64-linux-gnu/libnuma.so.1 $@

tools: $(BUILD)/ferry-bench $(BUILD)/ferry-demo $(BUILD)/ferryctl

# liburing and libnuma linked in (the GPU machine has no liburing); glibc
# stays dynamic, because libcuda is dlopened and needs the system's libc.
BENCH_SRCS := userspace/tools/ferry-bench.c userspace/tools/bench_msg.c userspace/tools/bench_gpu.c \
	userspace/tools/bench_plot.c userspace/tools/bench_time.c userspace/tools/bench_pipe.c \
	userspace/tools/bench_pool_copy.c userspace/tools/bench_e2e.c userspace/tools/cpu_clock.c
$(BUILD)/ferry-bench: $(BENCH_SRCS) userspace/tools/bench.h userspace/tools/bench_plot.h userspace/tools/cpu_clock.h $(LIB_A)
	$(CC) $(LIB_CFLAGS) -Iuserspace/tools -o $@ $(BENCH_SRCS) $(LIB_A) $(LIB_LDLIBS) -lm

# The demo's GPU kernels: PTX made by nvcc when there is one, embedded as a
# string and loaded through the driver API; without nvcc the string is
# empty and the demo runs its model on the CPU (and says so).
NVCC ?= $(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc))
$(BUILD)/demo_ptx.c: userspace/tools/demo_kernels.cu
	@mkdir -p $(@D)
	@if [ -n "$(NVCC)" ]; then \
		$(NVCC) -ptx -arch=compute_80 -o $(BUILD)/demo_kernels.ptx $< && \
		{ echo 'const char ferry_demo_ptx[] ='; \
		  sed 's/\\/\\\\/g; s/"/\\"/g; s/.*/"&\\n"/' $(BUILD)/demo_kernels.ptx; \
		  echo ';'; } > $@; \
	else \
		echo "# no nvcc: ferry-demo's model runs on the CPU only"; \
		echo 'const char ferry_demo_ptx[] = "";' > $@; \
	fi

DEMO_SRCS := userspace/tools/ferry-demo.c userspace/tools/demo_model.c userspace/tools/demo_run.c \
	userspace/tools/demo_ferry.c userspace/tools/demo_classic.c userspace/tools/bench_plot.c \
	userspace/tools/cpu_clock.c
DEMO_HDRS := userspace/tools/demo_model.h userspace/tools/demo_run.h userspace/tools/demo_paths.h \
	userspace/tools/bench_plot.h userspace/tools/cpu_clock.h
$(BUILD)/ferry-demo: $(DEMO_SRCS) $(DEMO_HDRS) $(BUILD)/demo_ptx.c $(LIB_A)
	$(CC) $(LIB_CFLAGS) -Iuserspace/tools -o $@ $(DEMO_SRCS) $(BUILD)/demo_ptx.c $(LIB_A) \
		$(LIB_LDLIBS) -lm

$(BUILD)/ferryctl: userspace/tools/ferryctl.c $(LIB_A)
	$(CC) $(LIB_CFLAGS) -o $@ $< $(LIB_A) $(LIB_LDLIBS)

# The main job, on whatever this machine has (see README.md).
demo: deps
	$(MAKE) lib tools
	$(BUILD)/ferry-demo $(DEMO_ARGS)

$(BUILD)/lib/%.o: userspace/lib/%.c $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -c -o $@ $<

$(LIB_A): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# Only the functions of userspace/abi/ferry.symbols are exported, each in
# the version node of the release that added it; the list must agree with
# the public header or the build stops (scripts/symbols.sh).
$(BUILD)/libferry.map: userspace/include/ferry.h userspace/abi/ferry.symbols scripts/symbols.sh
	@mkdir -p $(@D)
	scripts/symbols.sh --check
	scripts/symbols.sh > $@

# liburing is linked in (its objects are position-independent; the GPU
# machine has no liburing.so.2); Debian's libnuma.a is not, so libnuma
# stays a dependency (build/python/ferry/ carries a copy, see below).
$(LIB_SO): $(LIB_OBJS) $(BUILD)/libferry.map
	$(CC) -shared -Wl,-soname,libferry.so.0 -Wl,-z,defs \
		-Wl,--version-script,$(BUILD)/libferry.map -o $@ $(LIB_OBJS) -l:liburing.a -lnuma -pthread
	ln -sf libferry.so.0 $(BUILD)/libferry.so

# make install [PREFIX=/usr/local] [DESTDIR=]: library (shared + static),
# the public and uAPI headers, ferry.pc, the tools, the udev rule and the
# modules-load snippet.  Without DESTDIR it also makes the "ferry" group.
# The release: ferry.h's FERRY_VERSION_* (ferry.pc, DKMS, ferry_version()).
VERSION := $(shell scripts/symbols.sh --version)
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
UDEVDIR ?= /etc/udev/rules.d
MODLOADDIR ?= /etc/modules-load.d
# The Python package goes where this machine's python3 looks for it
# ($(PREFIX)/lib/python3.X/dist-packages on Debian; PYTHONDIR= to choose).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
PYTHONDIR ?= $(shell $(PYTHON) -c 'import sysconfig as s; p = "$(PREFIX)"; \
	loc = s.get_default_scheme() == "posix_local" and p.endswith("/local"); \
	b = p[:-6] if loc else p; \
	print(s.get_path("purelib", "posix_local" if loc else "posix_prefix", \
		vars={"base": b, "platbase": b}))' 2>/dev/null)
install: lib tools python
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)/linux $(DESTDIR)$(BINDIR)
	install -m 0755 $(LIB_SO) $(DESTDIR)$(LIBDIR)/libferry.so.0
	ln -sf libferry.so.0 $(DESTDIR)$(LIBDIR)/libferry.so
	install -m 0644 $(LIB_A) $(DESTDIR)$(LIBDIR)/libferry.a
	install -m 0644 userspace/include/ferry.h $(DESTDIR)$(INCLUDEDIR)/ferry.h
	install -m 0644 include/uapi/linux/ferry.h $(DESTDIR)$(INCLUDEDIR)/linux/ferry.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
		scripts/install/ferry.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/ferry.pc
	install -m 0755 $(BUILD)/ferry-demo $(BUILD)/ferry-bench $(BUILD)/ferryctl $(DESTDIR)$(BINDIR)/
	$(MAKE) --no-print-directory install-udev
	@if [ -n "$(PYTHONDIR)" ]; then \
		install -d $(DESTDIR)$(PYTHONDIR)/ferry && \
		install -m 0644 $(PY_OUT)/*.py $(DESTDIR)$(PYTHONDIR)/ferry/ && \
		install -m 0755 $(PY_OUT)/_forksafe.so $(DESTDIR)$(PYTHONDIR)/ferry/; \
	else echo "# no python3: the Python package is not installed (PYTHONDIR=)"; fi
	@if [ -z "$(DESTDIR)" ]; then ldconfig; fi

# The device's permissions and loading at boot, for hosts that take only
# the module (make dkms-install && make install-udev).
install-udev:
	install -d $(DESTDIR)$(UDEVDIR) $(DESTDIR)$(MODLOADDIR)
	install -m 0644 scripts/install/60-ferry.rules $(DESTDIR)$(UDEVDIR)/60-ferry.rules
	install -m 0644 scripts/install/ferry-modules-load.conf $(DESTDIR)$(MODLOADDIR)/ferry.conf
	@if [ -z "$(DESTDIR)" ]; then \
		getent group ferry >/dev/null || groupadd --system ferry; \
		command -v udevadm >/dev/null && udevadm control --reload || true; \
	fi

# DKMS: the module's sources under $(DKMS_SRC)/ferry-$(VERSION) (what
# `dkms add` wants), then add, build and install for the running kernel.
DKMS_SRC ?= /usr/src
dkms-source:
	rm -rf $(DESTDIR)$(DKMS_SRC)/ferry-$(VERSION)
	install -d $(DESTDIR)$(DKMS_SRC)/ferry-$(VERSION)/include/uapi/linux
	cp -r Kbuild kmod dkms.conf $(DESTDIR)$(DKMS_SRC)/ferry-$(VERSION)/
	cp include/uapi/linux/ferry.h $(DESTDIR)$(DKMS_SRC)/ferry-$(VERSION)/include/uapi/linux/
	rm -f $(DESTDIR)$(DKMS_SRC)/ferry-$(VERSION)/kmod/*.o \
		$(DESTDIR)$(DKMS_SRC)/ferry-$(VERSION)/kmod/*.ko \
		$(DESTDIR)$(DKMS_SRC)/ferry-$(VERSION)/kmod/*.mod*

dkms-install: dkms-source
	dkms remove ferry/$(VERSION) --all 2>/dev/null || true
	dkms add ferry/$(VERSION)
	dkms build ferry/$(VERSION)
	dkms install ferry/$(VERSION)

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

version:
	@echo $(VERSION)

# The ABI (abidw) of the library as built now becomes the baseline that
# scripts/abi-check.sh compares with: run it at a release, on purpose,
# and commit userspace/abi/; the check itself never writes there.
abi-baseline: $(LIB_SO)
	scripts/abi-check.sh --baseline

# A program built against the previous release's header (tests/abi/),
# linked to libferry.so.0 dynamically: old binaries against this library.
$(BUILD)/tests/abi/%: tests/abi/%.c tests/abi/ferry-0.h $(LIB_SO)
	@mkdir -p $(@D)
	$(CC) $(filter-out -static -Iinclude/uapi,$(TEST_CFLAGS)) -D_GNU_SOURCE -Itests/abi -I$(KSFT_DIR) \
		-o $@ $< -L$(BUILD) -l:libferry.so.0 -ldl -Wl,-rpath,'$$ORIGIN/../..'

build-tests: $(KMOD_TESTS) $(UAPI_TESTS) $(LIB_TESTS) $(GPU_TESTS) $(TOOL_TESTS) $(ABI_TESTS) \
	$(BUILD)/vm-tools/ferryctl $(BUILD)/tests/fixtures/libnotcuda.so \
	$(BUILD)/tests/fixtures/libfakecuda.so

# Test fixtures, found by the tests in ../fixtures beside themselves; out
# of the test folders, so no runner takes them for tests.  libnotcuda.so:
# no dependencies, not a CUDA driver (static tests may load it).
# libfakecuda.so: a CUDA driver with $$FERRY_FAKE_GPUS fake GPUs (tests/gpu).
$(BUILD)/tests/fixtures/libnotcuda.so: tests/fixtures/notcuda.c
	@mkdir -p $(@D)
	$(CC) -shared -nostdlib -fPIC -O2 -Wall -Wextra -Werror -o $@ $<

$(BUILD)/tests/fixtures/libfakecuda.so: tests/fixtures/fakecuda.c
	@mkdir -p $(@D)
	$(CC) -shared -fPIC -O2 -pthread -Wall -Wextra -Werror -isystem $(CUDA_INC) -o $@ $<

# Tools for the VM's initramfs: static, like the test binaries.
$(BUILD)/vm-tools/ferryctl: userspace/tools/ferryctl.c $(LIB_A)
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -static -o $@ $< $(LIB_A) $(LIB_LDLIBS)

$(BUILD)/tests/tools/%: tests/tools/%.c $(LIB_A)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) -D_GNU_SOURCE -Iuserspace/include -I$(KSFT_DIR) \
		-o $@ $< $(LIB_A) $(LIB_LDLIBS)

# GPU tests: glibc dynamic (libcuda is dlopened), the rest linked in.
$(BUILD)/tests/gpu/%: tests/gpu/%.c $(LIB_A) $(wildcard tests/gpu/*.h) tests/userspace/scm.h
	@mkdir -p $(@D)
	$(CC) $(filter-out -static,$(TEST_CFLAGS)) -D_GNU_SOURCE -Iuserspace/include -Iuserspace/lib \
		-isystem $(CUDA_INC) -I$(KSFT_DIR) -o $@ $< $(LIB_A) $(LIB_LDLIBS)

$(BUILD)/tests/userspace/%: tests/userspace/%.c $(LIB_A) $(wildcard tests/userspace/*.h)
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) -D_GNU_SOURCE -Iuserspace/include -Iuserspace/lib -I$(KSFT_DIR) \
		-o $@ $< $(LIB_A) $(LIB_LDLIBS)

$(BUILD)/tests/kmod/%: tests/kmod/%.c tests/kmod/ferry_test.h include/uapi/linux/ferry.h
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) -I$(KSFT_DIR) -o $@ $<

$(BUILD)/tests/uapi/%: tests/uapi/%.c include/uapi/linux/ferry.h
	@mkdir -p $(@D)
	$(CC) $(TEST_CFLAGS) -I$(KSFT_DIR) -o $@ $<

# The library and its tests again under ASan + UBSan (dynamic: the
# sanitizers' runtimes do not link statically).  Any report fails the test.
SAN := $(BUILD)/asan
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_OBJS := $(patsubst userspace/lib/%.c,$(SAN)/lib/%.o,$(LIB_SRCS))
SAN_TESTS := $(patsubst tests/userspace/%.c,$(SAN)/tests/userspace/%,$(wildcard tests/userspace/*.c))
# TSan: the tests whose processes have several threads.
TSAN := $(BUILD)/tsan
TSAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer
TSAN_TESTS := $(TSAN)/tests/userspace/chan $(TSAN)/tests/userspace/waitset
sanitize-tests: $(SAN_TESTS) $(TSAN_TESTS)

$(TSAN)/lib/%.o: userspace/lib/%.c $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) $(TSAN_FLAGS) -c -o $@ $<

$(TSAN)/libferry.a: $(patsubst userspace/lib/%.c,$(TSAN)/lib/%.o,$(LIB_SRCS))
	rm -f $@ && ar rcs $@ $^

$(TSAN)/tests/userspace/%: tests/userspace/%.c $(TSAN)/libferry.a $(wildcard tests/userspace/*.h)
	@mkdir -p $(@D)
	$(CC) $(filter-out -static,$(TEST_CFLAGS)) $(TSAN_FLAGS) -D_GNU_SOURCE -Iuserspace/include \
		-Iuserspace/lib -I$(KSFT_DIR) -o $@ $< $(TSAN)/libferry.a $(LIB_LDLIBS)

$(SAN)/lib/%.o: userspace/lib/%.c $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) $(SAN_FLAGS) -c -o $@ $<

$(SAN)/libferry.a: $(SAN_OBJS)
	rm -f $@ && ar rcs $@ $^

$(SAN)/tests/userspace/%: tests/userspace/%.c $(SAN)/libferry.a $(wildcard tests/userspace/*.h)
	@mkdir -p $(@D)
	$(CC) $(filter-out -static,$(TEST_CFLAGS)) $(SAN_FLAGS) -D_GNU_SOURCE -Iuserspace/include \
		-Iuserspace/lib -I$(KSFT_DIR) -o $@ $< $(SAN)/libferry.a $(LIB_LDLIBS)

# libFuzzer harnesses (clang) over what parses bytes another process wrote:
# the heap's checks, channels, the control protocol.  `make fuzz` runs each
# for FUZZ_SECONDS from its committed corpus (new finds go to build/).
FUZZ := $(BUILD)/fuzz
FUZZ_CC ?= clang
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
FUZZ_SECONDS ?= 60
FUZZ_NAMES := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/*.c))
fuzz-build: $(patsubst %,$(FUZZ)/%,$(FUZZ_NAMES))

$(FUZZ)/lib/%.o: userspace/lib/%.c $(LIB_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(LIB_CFLAGS) $(FUZZ_FLAGS) -c -o $@ $<

$(FUZZ)/libferry.a: $(patsubst userspace/lib/%.c,$(FUZZ)/lib/%.o,$(LIB_SRCS))
	rm -f $@ && ar rcs $@ $^

$(FUZZ)/%: tests/fuzz/%.c $(FUZZ)/libferry.a
	$(FUZZ_CC) $(LIB_CFLAGS) -g -O1 -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=all -o $@ $< $(FUZZ)/libferry.a $(LIB_LDLIBS)

fuzz: fuzz-build
	scripts/fuzz-test.sh $(FUZZ_SECONDS)

check:
	@scripts/check.sh

clean:
	rm -rf $(BUILD)
	@if [ -n "$(KDIR)" ] && [ -d "$(KDIR)" ]; then $(MAKE) -C $(KDIR) M=$(CURDIR) clean; fi
