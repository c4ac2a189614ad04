/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libferry: zero-copy transport between the processes of one host.
 *
 * A broker forks helpers (which do the work, on a GPU or a CPU) and
 * children (which produce requests).  Each child owns one shared-memory
 * region; it allocates tensors inside it with ferry_malloc() and sends
 * 64-byte descriptors naming (offset, len) in its region, never pointers.
 * Helpers map every child's region and answer in place.
 *
 * Every function that can fail returns 0 (or a non-negative value) on
 * success and a negative errno on failure; nothing prints unless asked.
 *
 * ABI: libferry.so.0 keeps working for programs built against an older
 * ferry.h.  The structs a caller allocates and the library reads or fills
 * (options, statistics) are extensible: the macros below pass the size
 * this header gives them, so the library knows which fields the caller
 * has.  A smaller (older) struct gets defaults for the fields it lacks; a
 * larger (newer) one is refused with -E2BIG unless every byte the library
 * does not know is 0; statistics are written only up to the caller's
 * size.  Structs that cross between processes (ferry_desc,
 * ferry_region_ref, ferry_pool_ref) have a fixed layout instead.
 */
#ifndef FERRY_H
#define FERRY_H

#include <assert.h>	/* static_assert, in C11 and C++ */
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Versions                                                             */

/* This header's release; the library's is ferry_version(). */
#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 2
#define FERRY_VERSION_PATCH 0
#define FERRY_VERSION_CODE(major, minor, patch) \
	(((uint32_t)(major) << 16) | ((uint32_t)(minor) << 8) | (uint32_t)(patch))
#define FERRY_VERSION \
	FERRY_VERSION_CODE(FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR, FERRY_VERSION_PATCH)
/*
 * The release of the libferry.so.0 this process runs, as FERRY_VERSION
 * encodes it: >= the FERRY_VERSION a program was built with, or the
 * dynamic linker would have refused to start it (versioned symbols).
 */
uint32_t ferry_version(void);

/* ------------------------------------------------------------------ */
/* Descriptors                                                          */

/*
 * What travels on a ring.  A child fills op, tag, offset, len and arg[];
 * the broker overwrites region (children cannot name other regions) and
 * routes; a helper answers with status (0 or -errno) and whatever it
 * wants in offset/len/arg[].
 */
struct ferry_desc {
	uint32_t op;		/* user op code; values >= 0xff000000 are ours */
	uint32_t flags;		/* FERRY_DESC_POOL or 0 */
	uint64_t tag;		/* chosen by the sender, echoed in the reply */
	uint32_t region;	/* region index, set by the broker */
	int32_t status;		/* reply: 0 or -errno */
	uint64_t offset;	/* bytes from the region's start */
	uint64_t len;
	uint64_t arg[3];
};
#define FERRY_DESC_SIZE 64
/* offset/len name a block of the pool (opts.pool_size), not the region. */
#define FERRY_DESC_POOL 1u
/* offset/len name a table of struct ferry_tensor in the child's heap. */
#define FERRY_DESC_TENSORS 2u
static_assert(sizeof(struct ferry_desc) == FERRY_DESC_SIZE, "descriptor is 64 bytes");

/*
 * Several tensors per request, with their shapes (DLPack-like; a binding
 * can hand them to numpy or torch).  A child puts up to FERRY_TENSORS_MAX
 * of these in its heap (ferry_malloc) and sends a descriptor with flags
 * FERRY_DESC_TENSORS and (offset, len) naming them.  The broker copies the
 * table where only it writes, checks every entry (its bytes in the child's
 * heap, or in one of the child's pool blocks, held until the reply; shape
 * and strides inside nbytes) and the helper reads the checked copy with
 * ferry_helper_tensors(): what it sees cannot change under it and names
 * only the sender's memory.  Any bad entry fails the request (-EINVAL).
 */
#define FERRY_TENSORS_MAX 16
#define FERRY_TENSOR_NDIM 6
enum ferry_dtype {
	FERRY_DT_BOOL = 1, FERRY_DT_U8, FERRY_DT_I8, FERRY_DT_U16, FERRY_DT_I16,
	FERRY_DT_F16, FERRY_DT_BF16, FERRY_DT_U32, FERRY_DT_I32, FERRY_DT_F32,
	FERRY_DT_U64, FERRY_DT_I64, FERRY_DT_F64,
};
enum ferry_where { FERRY_IN_REGION = 0, FERRY_IN_POOL = 1 };
struct ferry_tensor {
	uint8_t where;		/* enum ferry_where */
	uint8_t dtype;		/* enum ferry_dtype */
	uint8_t ndim;		/* 0 (a scalar) .. FERRY_TENSOR_NDIM */
	uint8_t flags;		/* 0 */
	uint32_t reserved;	/* 0 */
	uint64_t offset;	/* region offset (ferry_offset) or pool offset */
	uint64_t nbytes;	/* bytes from offset the tensor may touch */
	int64_t shape[FERRY_TENSOR_NDIM];	/* > 0 below ndim, 0 above */
	int64_t strides[FERRY_TENSOR_NDIM];	/* elements, >= 0; all 0: contiguous */
	uint64_t reserved2;	/* 0 */
};
static_assert(sizeof(struct ferry_tensor) == 128, "a tensor entry is 128 bytes");
/* Bytes per element of @dtype; 0 for a value that is not one. */
size_t ferry_dtype_size(unsigned int dtype);

/* ------------------------------------------------------------------ */
/* Regions and their backends                                           */

enum ferry_backend {
	FERRY_BACKEND_AUTO = 0,	/* $FERRY_BACKEND, else kmod if usable, else memfd */
	FERRY_BACKEND_KMOD = 1,	/* /dev/ferry: per-process grants, revoke */
	FERRY_BACKEND_MEMFD = 2,	/* sealed memfds passed by inheritance/SCM_RIGHTS */
};

#define FERRY_READ	1U
#define FERRY_WRITE	2U
/*
 * kmod: the grantee may pin the pages (CUDA host registration, O_DIRECT,
 * vmsplice, shared futexes), and pins it takes outlive a revoke; without
 * it those fail with -EFAULT on the grantee's mapping.  Give it only to
 * processes trusted to let go.  memfd backend: no effect.
 */
#define FERRY_PIN	4U

/* "kmod", "memfd" or "auto". */
const char *ferry_backend_name(enum ferry_backend b);
/* Parse "kmod"/"memfd"/"auto"; -EINVAL for anything else. */
int ferry_backend_parse(const char *s);
/*
 * Which backend @want means here: AUTO looks at $FERRY_BACKEND, then at
 * whether /dev/ferry opens and speaks our ABI.  Asking for kmod where the
 * module is not usable is -ENODEV.
 */
int ferry_backend_resolve(enum ferry_backend want);

/* A process's handle on its backend (for kmod: its own /dev/ferry session). */
struct ferry_rctx;
int ferry_rctx_open(enum ferry_backend want, struct ferry_rctx **out);
void ferry_rctx_close(struct ferry_rctx *rc);
enum ferry_backend ferry_rctx_backend(const struct ferry_rctx *rc);

struct ferry_region;
/*
 * A new region of @size bytes (rounded up to pages), owned and mapped
 * read-write by the caller.  @numa_node >= 0 binds its pages to that node
 * before they are touched; -1 leaves placement to the kernel.
 */
int ferry_region_create(struct ferry_rctx *rc, size_t size, int numa_node,
			struct ferry_region **out);
/*
 * What another process needs to map the region.  For kmod the id is all
 * that matters; for memfd the fd must reach the peer (inherited across
 * fork or sent with SCM_RIGHTS) and is the access right itself.
 */
struct ferry_region_ref {
	uint32_t id;		/* kmod region id, 0 for memfd */
	int32_t fd;		/* memfd (in the sender's fd table), -1 for kmod */
	uint64_t size;
};
/* Fixed layout (it travels between programs of different builds). */
static_assert(sizeof(struct ferry_region_ref) == 16, "region ref is 16 bytes");
void ferry_region_ref(const struct ferry_region *r, struct ferry_region_ref *out);
/*
 * Let the process behind @pidfd map the region with @rights: FERRY_READ,
 * optionally | FERRY_WRITE | FERRY_PIN.  kmod: a grant checked by the
 * kernel on every mmap (a module too old to know FERRY_PIN made every
 * mapping pinnable: the bit is dropped there).  memfd: nothing to do here
 * (holding the fd is the right); returns 0.
 */
int ferry_region_grant(struct ferry_region *r, int pidfd, unsigned int rights);
/* kmod: withdraw and zap the peer's mappings.  memfd: -EOPNOTSUPP. */
int ferry_region_revoke(struct ferry_region *r, int pidfd);
/* Map a region someone else owns (@ref as they described it); FERRY_PIN in
 * @rights is accepted and changes nothing (the grant decides). */
int ferry_region_import(struct ferry_rctx *rc, const struct ferry_region_ref *ref,
			unsigned int rights, struct ferry_region **out);
void *ferry_region_base(const struct ferry_region *r);
size_t ferry_region_size(const struct ferry_region *r);
/* Unmap; the owner's close also destroys the region (mappings elsewhere live on). */
void ferry_region_close(struct ferry_region *r);

/* ------------------------------------------------------------------ */
/* Heap inside a region                                                 */

/*
 * A heap keeps all its metadata inside [base + heap_off, base + size) and
 * hands out offsets from @base, 64-byte aligned.  One process mutates a
 * heap; others may only check ranges against it.  Not thread-safe: callers
 * that share a heap between threads lock around it (ferry_malloc does).
 */
#define FERRY_HEAP_ALIGN 64
/*
 * Lay a heap over [heap_off, size).  Every later call must pass the same
 * @size (the heap finds its header from it).  -ENOSPC when too small.
 * Calls that detect corrupted metadata return -EUCLEAN and never write
 * outside [heap_off, size).
 */
int ferry_heap_format(void *base, uint64_t size, uint64_t heap_off);
/* Offset of a block of at least @n bytes, or -ENOMEM / -EINVAL. */
int64_t ferry_heap_alloc(void *base, uint64_t size, uint64_t n);
/* -EINVAL when @off is not a live block (double free, garbage). */
int ferry_heap_free(void *base, uint64_t size, uint64_t off);
/*
 * 0 when [off, off + len) lies inside one live block, -EINVAL otherwise.
 * Safe on a heap whose metadata a hostile process rewrote: it reads only
 * inside [base, base + size) and each metadata word once.
 */
int ferry_heap_check(const void *base, uint64_t size, uint64_t off, uint64_t len);
/* Sizes include block headers: used + free == capacity.  largest_free is
 * the largest n one ferry_heap_alloc() can satisfy now. */
struct ferry_heap_stats {
	uint64_t capacity, used, free, largest_free;
	uint64_t live_blocks, free_blocks;
	/* New counters go here, at the end: uint64_t only. */
};
/* @out_size: sizeof(*out) as the caller knows it (the macro passes it). */
int ferry_heap_stats_sized(const void *base, uint64_t size, struct ferry_heap_stats *out,
			   size_t out_size);
#define ferry_heap_stats(base, size, out) \
	ferry_heap_stats_sized((base), (size), (out), sizeof(struct ferry_heap_stats))

/* ------------------------------------------------------------------ */
/* Broker, children, helpers                                            */

struct ferry_broker;
struct ferry_child;	/* a child's (or attached service's) end */
struct ferry_helper;	/* a helper's end */

/* A child's body; its return value is the child's exit status. */
typedef int (*ferry_child_fn)(struct ferry_child *c, void *arg);
/*
 * A helper's request handler.  @rep starts as a copy of @req; the handler
 * may change offset/len/arg[] and returns the reply's status (0 or -errno).
 * Tensor bytes are reached through ferry_helper_data(), never by trusting
 * offsets directly.
 */
typedef int (*ferry_handler_fn)(struct ferry_helper *h, const struct ferry_desc *req,
				struct ferry_desc *rep, void *arg);
/*
 * A batch handler (opts.batch_handler, in place of handler), as Triton's
 * execute(requests): @n >= 1 requests the helper took from its ring at
 * once -- the one it woke for and those already waiting behind it, up to
 * opts.helper_batch -- so that one model call serves them all.  rep[k]
 * starts as a copy of req[k]; the handler sets rep[k].status (0, -errno,
 * or FERRY_DEFERRED after ferry_helper_defer(h, &rep[k], stream)) and may
 * change its offset/len/arg[] as a handler does.  The calls for one
 * request take that request, as a handler's do (ferry_helper_data,
 * _tensors, _tensor_addr, _pool_alloc), or its reply (_defer: &rep[k]);
 * the pool's ranges by ferry_helper_req_pool_addr(h, &req[k], ...) (the
 * plain ferry_helper_pool_addr() resolves nothing in a batch).
 * Requests come in ring order; replies go as each is ready.
 */
typedef void (*ferry_batch_fn)(struct ferry_helper *h, const struct ferry_desc *req,
			       struct ferry_desc *rep, unsigned int n, void *arg);
/* Optional per-helper setup, run once in each (re)started helper. */
typedef int (*ferry_helper_init_fn)(struct ferry_helper *h, void *arg);

struct ferry_broker_opts {
	unsigned int children;		/* forked children, may be 0 */
	unsigned int helpers;		/* >= 1 */
	size_t region_size;		/* heap bytes per child region */
	unsigned int window;		/* outstanding requests per child (K) */
	unsigned int helper_depth;	/* requests queued at one helper at once */
	enum ferry_backend backend;
	uint64_t spin_ns;		/* spin before sleeping; $FERRY_SPIN_NS */
	ferry_child_fn child_fn;
	void *child_arg;
	ferry_handler_fn handler;
	ferry_helper_init_fn helper_init;
	void *helper_arg;
	const char *attach_path;	/* unix socket for services, NULL: none */
	const char *stats_path;		/* unix socket for counters (ferryctl stats) */
	unsigned int max_attached;	/* services attached at once */
	int numa_node;			/* region placement, -1: none */
	/*
	 * A CPU kept for the dispatch thread alone (children and helpers are
	 * kept off it): FERRY_CPU_AUTO picks the last usable CPU when there
	 * are more peers than CPUs and at least 4 CPUs, FERRY_CPU_NONE never
	 * reserves, >= 0 names the CPU.  $FERRY_DISPATCH_CPU ("auto", "none"
	 * or a number) overrides.
	 */
	int dispatch_cpu;
	/*
	 * GPUs for helpers: FERRY_GPU_AUTO (helper i serves GPU i % count
	 * where there are GPUs, CPU helpers where there are none),
	 * FERRY_GPU_NONE, or >= 0: every helper on that GPU (a helper that
	 * cannot have it fails to start).  A helper on a GPU registers each
	 * child region with CUDA (pinned) and has @streams CUDA streams.
	 */
	int gpu;
	unsigned int streams;
	/*
	 * Bytes of pool per GPU (0: none): tensors by (offset, len) with
	 * FERRY_DESC_POOL.  Made by each GPU's first helper, or by the broker
	 * as a CPU pool where helpers have no GPU; imported once by every
	 * helper and (on first use) child.  See ferry_child_pool_alloc().
	 */
	size_t pool_size;
	/*
	 * Watchdog (0: off, the default): a helper that holds one request
	 * longer than this is taken as hung (a kernel that never ends): it
	 * is killed and restarted, and every request it held fails back with
	 * -ETIMEDOUT.  Set it well above the longest request you serve.
	 * A helper that leaves its control socket full (it does not take
	 * region announcements) this long is hung too, once it has shown it
	 * is past its init (started with the broker, or answered since its
	 * restart); otherwise, and without a watchdog, that limit is 30 s.
	 */
	uint64_t helper_timeout_ns;
	/*
	 * FERRY_HELPERS_EXACT: @helpers is the count to start, never
	 * raised.  With FERRY_GPU_AUTO and fewer helpers than GPUs the
	 * children of some GPU would have no helper, so start fails with
	 * -EINVAL (said on stderr) instead of raising @helpers to the GPU
	 * count as it does without this flag.
	 * FERRY_CHILDREN_MAP_POOL: children get the pool's handle and may
	 * map all of it (ferry_child_pool); only for children that trust
	 * each other.  Without it a child holds no handle to the pool: it
	 * reaches its blocks through helpers (put, get, requests) and cannot
	 * read or write another child's.
	 * FERRY_DISPATCH_POLL / FERRY_DISPATCH_SLEEP: the dispatch thread
	 * polls (never sleeps: no wake-ups on the request and reply paths,
	 * a CPU busy all the time) or sleeps once its spin (spin_ns) ends,
	 * whatever is in flight.  Without either it polls where it has a
	 * CPU of its own (dispatch_cpu); elsewhere it polls only while
	 * replies are near or not yet predicted (for at most 1 ms after
	 * anything moved) and through gaps between requests shorter than
	 * 100 us that it has learned, and sleeps otherwise: requests whose
	 * children and helpers sleep cost it no wake-up, an idle broker and
	 * helpers working for milliseconds cost it no CPU.
	 * $FERRY_DISPATCH_POLL=1 or 0 overrides all three (0: as
	 * FERRY_DISPATCH_SLEEP).
	 */
	unsigned int flags;
	/* Must be 0: it names what would be padding, so that every byte of
	 * the struct is either a field or checked (see "ABI" above). */
	unsigned int reserved;
	/*
	 * Bytes of each helper's pool arena (ferry_helper_pool_alloc): taken
	 * from its GPU's pool when the helper starts, so children can
	 * allocate the rest.  0: a quarter of the pool, shared evenly by the
	 * helpers of that pool; more than the pool holds: start fails with
	 * -EINVAL.
	 */
	uint64_t helper_pool_bytes;
	/*
	 * A batch handler (see ferry_batch_fn) instead of handler: exactly
	 * one of the two is set (-EINVAL otherwise).  helper_batch: the most
	 * requests one call gets, at most helper_depth (what a helper may
	 * hold at once; more is -EINVAL); 0: helper_depth.
	 */
	ferry_batch_fn batch_handler;
	unsigned int helper_batch;
	unsigned int reserved2;		/* 0 */
	/* New fields go here, at the end, and nowhere else. */
};
#define FERRY_HELPERS_EXACT (1u << 0)
#define FERRY_CHILDREN_MAP_POOL (1u << 1)
#define FERRY_DISPATCH_POLL (1u << 2)
#define FERRY_DISPATCH_SLEEP (1u << 3)
#define FERRY_CPU_AUTO (-1)
#define FERRY_CPU_NONE (-2)
#define FERRY_GPU_AUTO (-1)
#define FERRY_GPU_NONE (-2)
/*
 * Every field to its default.  The _sized functions take the caller's
 * sizeof(*o) (the macros pass it): -EINVAL for a size no release had,
 * -E2BIG when a larger struct has a non-zero field (or reserved) this
 * library does not know.
 */
int ferry_broker_opts_init_sized(struct ferry_broker_opts *o, size_t size);
#define ferry_broker_opts_init(o) \
	ferry_broker_opts_init_sized((o), sizeof(struct ferry_broker_opts))

/*
 * Create the regions, fork the helpers then the children, and start the
 * dispatch thread.  Every process started here dies with the broker
 * (PR_SET_PDEATHSIG) and no file outlives it.
 */
int ferry_broker_start_sized(const struct ferry_broker_opts *o, size_t size,
			     struct ferry_broker **out);
#define ferry_broker_start(o, out) \
	ferry_broker_start_sized((o), sizeof(struct ferry_broker_opts), (out))
enum ferry_backend ferry_broker_backend(const struct ferry_broker *b);
/*
 * Wait until every forked child has exited (up to @timeout_ns, <0:
 * forever); -ETIMEDOUT otherwise.  Returns the number of children that
 * exited non-zero or were killed.
 */
int ferry_broker_wait(struct ferry_broker *b, int64_t timeout_ns);
/* Kill everything still running, free every region, and free @b. */
void ferry_broker_stop(struct ferry_broker *b);
pid_t ferry_broker_child_pid(const struct ferry_broker *b, unsigned int i);
pid_t ferry_broker_helper_pid(const struct ferry_broker *b, unsigned int i);
/* The CPU the dispatch thread has to itself, or -1 (see dispatch_cpu). */
int ferry_broker_dispatch_cpu(const struct ferry_broker *b);

struct ferry_broker_stats {
	uint64_t requests;		/* accepted from children */
	uint64_t replies;		/* delivered to children */
	uint64_t failed_back;		/* replies made by the broker (-EPIPE...) */
	uint64_t bad_desc;		/* malformed descriptors from children */
	uint64_t bad_reply;		/* malformed replies from helpers */
	uint64_t dropped;		/* requests of dead children */
	uint64_t child_exits;		/* children and services that ended */
	uint64_t child_deaths;		/* ... of them killed by a signal */
	uint64_t helper_deaths, helper_restarts;
	uint64_t helper_backoffs;	/* restarts delayed: its last life was short */
	uint64_t helper_timeouts;	/* helpers killed by the watchdog */
	uint64_t attached, attach_refused;
	uint64_t queued;		/* requests waiting for a helper now */
	uint64_t in_flight;		/* at helpers now */
	uint64_t wakeups;		/* times the dispatch thread woke */
	uint64_t bells;			/* peers woken by the dispatch thread */
	uint64_t pool_allocs, pool_frees, pool_oom;	/* pool blocks for children */
	uint64_t dispatch_cpu_ns;	/* CPU time the dispatch thread used */
	uint64_t pool_waits;		/* pool allocations that waited for room (0.2) */
	/* New counters go here, at the end: uint64_t only. */
};
/* Counters up to @size (the caller's sizeof(*out)); bytes past what this
 * library counts are zeroed. */
int ferry_broker_stats_sized(struct ferry_broker *b, struct ferry_broker_stats *out,
			     size_t size);
#define ferry_broker_stats(b, out) \
	ferry_broker_stats_sized((b), (out), sizeof(struct ferry_broker_stats))
/* Requests served by helper slot @i since start (all incarnations). */
uint64_t ferry_broker_helper_served(struct ferry_broker *b, unsigned int i);

/* --- pools: tensors travel as (pool, offset, len) --- */

/*
 * A pool is one large allocation made once by its owner and imported once
 * by every other participant; descriptors then name tensors by offset.
 *   FERRY_POOL_CUDA: device memory on GPU @device, made with cuMemCreate
 *     and exported as a POSIX fd (legacy cuIpc handles where the driver
 *     cannot); addresses are CUdeviceptrs.  CUDA is loaded at run time:
 *     without a driver or GPU this kind returns -ENODEV.
 *   FERRY_POOL_CPU: a sealed memfd with the same protocol, so hosts
 *     without a GPU (and CI) run it end to end; addresses are pointers.
 * Only the creating process allocates (ferry_pool_alloc); its allocator
 * is stream-safe: a block other streams used (ferry_pool_record_stream)
 * is reused only after their work completes.  Streams are CUstreams (CPU
 * pools: NULL).  The allocator's lock is a spinlock held for non-blocking
 * bookkeeping and event record/query calls only.
 */
enum ferry_pool_kind {
	FERRY_POOL_CPU = 1,
	FERRY_POOL_CUDA = 2,
};

struct ferry_pool;
struct ferry_pool_ref {
	uint32_t kind;		/* enum ferry_pool_kind */
	int32_t device;		/* CUDA device ordinal, -1 for CPU */
	uint64_t size;
	int32_t fd;		/* memfd / VMM fd, -1 for legacy IPC */
	uint32_t legacy;	/* 1: ipc[] holds a cuIpcMemHandle */
	uint8_t ipc[64];
};
/* Fixed layout (it travels between programs of different builds). */
static_assert(sizeof(struct ferry_pool_ref) == 88, "pool ref is 88 bytes");

/*
 * GPUs as a forked process finds them (0 if none), without loading CUDA
 * into this one: what a broker's helpers will see.  Call this, not
 * ferry_gpu_count(), in a process that will start a broker (CUDA state
 * does not survive fork).
 */
int ferry_gpu_count_forked(void);
/* GPUs usable by this process, or -ENODEV; ferry_gpu_status() says why. */
int ferry_gpu_count(void);
const char *ferry_gpu_status(void);

/* Create a pool of at least @size bytes (rounded up to the granularity). */
int ferry_pool_create(enum ferry_pool_kind kind, int device, size_t size,
		      struct ferry_pool **out);
/* Describe @p for another process; ref->fd is a new fd the caller sends
 * (SCM_RIGHTS or inheritance) and then closes. */
int ferry_pool_export(const struct ferry_pool *p, struct ferry_pool_ref *ref);
/* Map a pool described by @ref (once per process); ref->fd stays the caller's. */
int ferry_pool_import(const struct ferry_pool_ref *ref, struct ferry_pool **out);
/*
 * The two above over a unix socket: send @p's reference (and its fd, by
 * SCM_RIGHTS) in one message; receive one and import it.  -EPROTO for a
 * message that is not a pool reference, -ECONNRESET at end of stream.
 */
int ferry_pool_send(int sock, const struct ferry_pool *p);
int ferry_pool_recv(int sock, struct ferry_pool **out);
void ferry_pool_close(struct ferry_pool *p);
enum ferry_pool_kind ferry_pool_kind(const struct ferry_pool *p);
size_t ferry_pool_size(const struct ferry_pool *p);
/* Address of [off, off + len) in this process (CUdeviceptr or pointer),
 * or 0 when the range is not inside the pool. */
uint64_t ferry_pool_addr(const struct ferry_pool *p, uint64_t off, uint64_t len);
/* Owner only (-EPERM elsewhere): @n bytes for work on @stream. */
int ferry_pool_alloc(struct ferry_pool *p, size_t n, void *stream, uint64_t *off);
int ferry_pool_record_stream(struct ferry_pool *p, uint64_t off, void *stream);
int ferry_pool_free(struct ferry_pool *p, uint64_t off);
/* Bytes in live blocks and in frees still waiting for streams. */
int ferry_pool_usage(struct ferry_pool *p, uint64_t *live, uint64_t *deferred);

/* --- in a child or an attached service --- */

/* Index among children (attached services come after the forked ones). */
unsigned int ferry_child_index(const struct ferry_child *c);
/* Allocate inside the child's own region (thread-safe); NULL when full. */
void *ferry_malloc(struct ferry_child *c, size_t n);
/*
 * The same, waiting up to @timeout_ns (< 0: for ever, 0: not at all) for
 * another thread of this process to ferry_free() enough room; NULL with
 * errno ENOMEM when the time is up (or @n can never fit).
 */
void *ferry_malloc_timeout(struct ferry_child *c, size_t n, int64_t timeout_ns);
void ferry_free(struct ferry_child *c, void *p);
/* Offset of @p in the region (what descriptors carry), or UINT64_MAX. */
uint64_t ferry_offset(const struct ferry_child *c, const void *p);
void *ferry_ptr(const struct ferry_child *c, uint64_t off);
/*
 * A child handle may be shared by the threads of a service: calls,
 * submits and completions are safe from any of them and mix freely (each
 * call gets its own reply; ferry_complete() gets replies of submitted
 * requests only).  Tags with both top bits set (>> 62 == 3) are ferry's
 * own: ferry_submit() refuses them (-EINVAL).
 *
 * Send @req and wait for its reply; -EPIPE and friends come back in
 * rep->status.  -EAGAIN when the window is full.
 */
int ferry_call(struct ferry_child *c, const struct ferry_desc *req, struct ferry_desc *rep);
/*
 * ferry_call() with a deadline: -ETIMEDOUT when no reply came within
 * @timeout_ns (<0: forever).  The request goes on at its helper: its
 * reply is dropped when it comes, and until then it holds one place in the
 * window (ferry_outstanding() counts it) and the buffers it names must
 * stay allocated; pool blocks it names stay held by the broker.
 */
int ferry_call_timeout(struct ferry_child *c, const struct ferry_desc *req,
		       struct ferry_desc *rep, int64_t timeout_ns);
/* Asynchronous: -EAGAIN when the window is full (collect replies first). */
int ferry_submit(struct ferry_child *c, const struct ferry_desc *req);
/*
 * Next reply of a submitted request, waiting up to @timeout_ns (<0:
 * forever; 0: take one that is already there, wait for none): 0,
 * -ETIMEDOUT, -ENOENT when no submitted request is outstanding, -EPIPE
 * when the broker is gone.
 */
int ferry_complete(struct ferry_child *c, struct ferry_desc *rep, int64_t timeout_ns);
/*
 * For event loops (asyncio, epoll, libuv): ferry_child_fd() is an fd
 * (made on first use, closed with the child handle) that polls readable
 * (POLLIN) when a reply of a submitted request may be waiting, or, for an
 * attached service, when the broker has gone.  Before each wait on it,
 * and after every ferry_submit(), call ferry_child_fd_arm():
 *   1: do not wait, something is there: take replies with
 *      ferry_complete(c, &rep, 0) until it says -ETIMEDOUT (or -ENOENT),
 *      then arm again;
 *   0: armed: the fd stays quiet until there is something (it may wake
 *      spuriously: complete says -ETIMEDOUT, arm again);
 *   -errno: -EPIPE when the broker has gone and no submitted request
 *      is outstanding; -EOPNOTSUPP where this process's io_uring cannot wait on the
 *      broker's futex doorbells (FERRY_WAITSET_FORCE_EVENTFD in one
 *      process and not the other), or what setting it up failed with.
 * Calls and completions from other threads mix with it freely.  The wait
 * belongs to the thread that armed it: arm from the thread that polls.
 * The fd is an io_uring's: its completion may interrupt an epoll_wait()
 * of that thread with EINTR (retry, as event loops do).
 */
int ferry_child_fd(struct ferry_child *c);
int ferry_child_fd_arm(struct ferry_child *c);
unsigned int ferry_outstanding(const struct ferry_child *c);
unsigned int ferry_window(const struct ferry_child *c);

/*
 * The broker's pool (opts.pool_size), seen from a child: the pool of the
 * GPU that serves this child (or the CPU pool).  ferry_child_pool()
 * imports it (on first use) only with opts.flags FERRY_CHILDREN_MAP_POOL;
 * without, -EACCES: children hold no handle to it.  -ENOENT when the
 * broker has none.  Blocks are asked of the broker, which
 * owns the offsets: ferry_child_pool_alloc() puts the block's offset in
 * *@off (-ENOMEM when full, -EAGAIN when the window is full: each call
 * takes one request's place while it runs).  A request names a block with
 * flags = FERRY_DESC_POOL and (offset, len) inside one of this child's
 * blocks.  ferry_child_pool_free() fails with -EBUSY while requests naming
 * the block are at helpers.  ferry_child_pool_put(): a buffer that is not
 * in the pool is copied into a new block once (by a helper: see below);
 * bytes already in the pool need no copy.
 */
int ferry_child_pool(struct ferry_child *c, struct ferry_pool **out);
int ferry_child_pool_alloc(struct ferry_child *c, size_t n, uint64_t *off);
/*
 * The same, waiting up to @timeout_ns (< 0: for ever, 0: not at all) while
 * the pool is full: the broker queues the request and serves it, oldest
 * first among those that fit, when blocks are freed (by any child, or a
 * child's death); when the time is up it tries once more, then -ENOMEM.
 * In a GPU pool, freed blocks wait for the helpers' stream fences before
 * reuse (README, "Freed pool blocks and streams"): when the time is up
 * with blocks still behind them, every helper fences its streams now and
 * the last try comes once they have (at most a second later).  The call
 * holds one place in the window while it waits.
 */
int ferry_child_pool_alloc_timeout(struct ferry_child *c, size_t n, int64_t timeout_ns,
				   uint64_t *off);
int ferry_child_pool_free(struct ferry_child *c, uint64_t off);
int ferry_child_pool_put(struct ferry_child *c, const void *src, size_t n, uint64_t *off);
/*
 * Copies between a child and its pool blocks are made by a helper (host
 * to device on its stream, from the child's pinned region, for a GPU
 * pool): a child needs no CUDA context.  ferry_child_pool_put() above
 * allocates a block and copies @src into it; ferry_child_pool_get()
 * copies @n bytes of the block bytes at @off into @dst.  A buffer in the
 * child's region is copied from or to directly; any other is staged
 * through the region's heap (up to 4 MiB at a time).  For overlap, fill
 * a descriptor with ferry_child_pool_copy_desc() (a buffer in the region,
 * a range of one of this child's blocks), set its tag, and ferry_submit()
 * it; its reply comes through ferry_complete() like any other.  The broker
 * checks both ranges against the child's heap and blocks.
 */
enum ferry_pool_copy { FERRY_POOL_PUT = 1, FERRY_POOL_GET = 2 };
int ferry_child_pool_get(struct ferry_child *c, uint64_t off, void *dst, size_t n);
int ferry_child_pool_copy_desc(const struct ferry_child *c, enum ferry_pool_copy dir,
			       const void *region_ptr, size_t n, uint64_t block_off,
			       struct ferry_desc *d);

/*
 * Attach to a running broker's socket as a service; ferry_detach() ends
 * it.  -ETIMEDOUT when the broker has not answered within
 * FERRY_ATTACH_TIMEOUT_NS (ferry_attach) or @timeout_ns (<0: forever).
 */
#define FERRY_ATTACH_TIMEOUT_NS (30LL * 1000000000)
int ferry_attach(const char *path, struct ferry_child **out);
int ferry_attach_timeout(const char *path, int64_t timeout_ns, struct ferry_child **out);
void ferry_detach(struct ferry_child *c);

/* --- in a helper --- */

unsigned int ferry_helper_index(const struct ferry_helper *h);
/*
 * How many descriptors wait in this helper's ring, not yet taken (a
 * snapshot): a batch handler that would rather wait for a fuller batch
 * can look (the next call takes them, up to opts.helper_batch).
 */
unsigned int ferry_helper_waiting(const struct ferry_helper *h);
/*
 * A batch's tensors in one buffer, in one call: ferry_helper_gather()
 * copies table entry @entry of each of @req[0..n) (requests in hand,
 * FERRY_DESC_TENSORS, the entry C-contiguous) back to back into @dst,
 * ferry_helper_scatter() from @src back into each; the buffer is @cap
 * bytes of this helper's: device memory (a CUdeviceptr) on a GPU helper,
 * where the copies are queued on @stream (defer the replies there), host
 * memory on a CPU helper (@stream NULL; copied at once).  Returns the
 * bytes copied; -EINVAL for a request not in hand, without that entry or
 * with a strided one, -EFAULT for an entry that does not resolve, -ENOSPC
 * when they do not fit in @cap: all checked before any copy.  An error
 * of the driver's on a later copy comes back once the copies queued
 * before it have ended.
 */
int64_t ferry_helper_gather(struct ferry_helper *h, const struct ferry_desc *const *req,
			    unsigned int n, unsigned int entry, uint64_t dst, size_t cap,
			    void *stream);
int64_t ferry_helper_scatter(struct ferry_helper *h, const struct ferry_desc *const *req,
			     unsigned int n, unsigned int entry, uint64_t src, size_t cap,
			     void *stream);
/*
 * Pointer to [off, off + len) of the region a request came from, checked
 * against the region's bounds and its heap; NULL (and counted) otherwise.
 */
void *ferry_helper_data(struct ferry_helper *h, const struct ferry_desc *req,
			uint64_t off, uint64_t len);

/*
 * Helpers on a GPU.  ferry_helper_gpu(): the device this helper serves
 * (its primary context is current), or -1.  ferry_helper_stream(): one of
 * the helper's CUDA streams (a CUstream), round robin, so the work of
 * different requests overlaps; NULL without a GPU.
 *
 * An asynchronous reply: the handler queues its copies and kernels on a
 * stream, calls ferry_helper_defer(h, rep, stream) and returns
 * FERRY_DEFERRED; the helper takes further requests meanwhile and sends
 * @rep (status 0, or the CUDA error as -errno) once the stream's work
 * queued so far has completed.  -ENODEV without a GPU; -EINVAL outside a
 * handler or twice for one request.
 *
 * ferry_helper_pinned(): whether the region of @req is registered with
 * CUDA by this helper (done once per region when it is added, undone when
 * the child goes); ferry_helper_pinned_count(): how many are.
 */
#define FERRY_DEFERRED 1
/*
 * The address (a CUdeviceptr, or a pointer for a CPU pool) of [off, off +
 * len) of this helper's pool, in a handler, where the request being
 * handled names that range: its own (offset, len) with FERRY_DESC_POOL, a
 * FERRY_IN_POOL entry of its tensor table (both checked by the broker to
 * be the sender's blocks), or a block ferry_helper_pool_alloc() made for
 * it.  0 (counted) for anything else, outside a handler too: an offset a
 * child put in arg[] may be another child's block, so it is never
 * resolved.  Name pool memory with FERRY_DESC_POOL or a table.  In a
 * batch handler, where several requests are in hand, it resolves nothing:
 * ferry_helper_req_pool_addr() says which request's range is meant (it
 * works in a handler too).
 */
uint64_t ferry_helper_pool_addr(struct ferry_helper *h, uint64_t off, uint64_t len);
uint64_t ferry_helper_req_pool_addr(struct ferry_helper *h, const struct ferry_desc *req,
				    uint64_t off, uint64_t len);
/*
 * A FERRY_DESC_TENSORS request's checked table: its entry count (and
 * *@t), or -EINVAL for any other request.  ferry_helper_tensor_addr():
 * where entry @t's bytes are in this helper (a host pointer for a region
 * tensor, a device address for a pool tensor on a GPU), 0 if nowhere.
 */
int ferry_helper_tensors(struct ferry_helper *h, const struct ferry_desc *req,
			 const struct ferry_tensor **t);
uint64_t ferry_helper_tensor_addr(struct ferry_helper *h, const struct ferry_desc *req,
				  const struct ferry_tensor *t);
/*
 * Outputs sized by the model: a block of @n bytes of this helper's pool
 * for the child that sent @req (the request being handled), without
 * asking anyone: each helper sub-allocates its own arena of the pool
 * (opts.helper_pool_bytes).  0 and *@off; the handler writes the block
 * (on @stream, a stream of this helper or NULL, which the block then
 * belongs to: its reuse after the child frees it is ordered after that
 * stream's work) and names it in its reply (FERRY_DESC_POOL, or a table
 * in the child's heap).  When the reply's status is 0 the block is the
 * child's, which frees it with ferry_child_pool_free(); with an error
 * status it goes back to the arena.  At most FERRY_HELPER_ALLOCS_MAX per
 * request (-ENOSPC beyond); -ENOMEM when the arena is full (the blocks
 * children freed are taken back first); -EINVAL outside a handler, for
 * n == 0 or another request than the one being handled; -ENOENT without
 * a pool.
 */
#define FERRY_HELPER_ALLOCS_MAX 8
int ferry_helper_pool_alloc(struct ferry_helper *h, const struct ferry_desc *req, size_t n,
			    void *stream, uint64_t *off);
int ferry_helper_gpu(const struct ferry_helper *h);
void *ferry_helper_stream(struct ferry_helper *h);
int ferry_helper_defer(struct ferry_helper *h, const struct ferry_desc *rep, void *stream);
/*
 * ferry_helper_defer() for the replies @rep[0..n) of a batch at once (each
 * one of the batch handler's rep[], none deferred yet: -EINVAL otherwise,
 * nothing deferred): one host function wakes the helper for all of them,
 * instead of one each.  0, then set each status to FERRY_DEFERRED.  On a
 * driver error (-errno), set every one's status to it: those deferred
 * already are then answered with it.
 */
int ferry_helper_defer_all(struct ferry_helper *h, struct ferry_desc *const *rep, unsigned int n,
			   void *stream);
bool ferry_helper_pinned(const struct ferry_helper *h, const struct ferry_desc *req);
unsigned int ferry_helper_pinned_count(const struct ferry_helper *h);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_H */
