// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * Pools: one big allocation, made once and imported once, tensors named by
 * offset (see ferry.h).  The owner keeps a stream-safe allocator (palloc)
 * over the offsets; importers only map.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cuda_api.h"
#include "ferry.h"
#include "internal.h"
#include "palloc.h"

#define CPU_ALIGN 64
#define GPU_ALIGN 256	/* what cudaMalloc guarantees */

struct ferry_pool {
	enum ferry_pool_kind kind;
	int device;
	bool owner;
	bool legacy;		/* CUDA: cuMemAlloc + cuIpc handle instead of VMM */
	uint64_t size;
	uint64_t addr;		/* pointer or CUdeviceptr */
	int fd;			/* memfd / VMM export fd, -1 otherwise */
	struct ferry_cuda *cu;
	CUmemGenericAllocationHandle handle;
	CUipcMemHandle ipc;
	struct ferry_palloc *alloc;	/* owner only */
	pthread_spinlock_t lock;
};

/* ---- palloc's view of CUDA streams ---- */

static int ev_record(void *ctx, void *stream, void **ev)
{
	struct ferry_pool *p = ctx;
	CUevent e;
	int err = ferry_cuda_errno(p->cu->cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));

	if (err)
		return err;
	err = ferry_cuda_errno(p->cu->cuEventRecord(e, (CUstream)stream));
	if (err) {
		p->cu->cuEventDestroy(e);
		return err;
	}
	*ev = e;
	return 0;
}

static int ev_query(void *ctx, void *ev)
{
	struct ferry_pool *p = ctx;
	CUresult r = p->cu->cuEventQuery((CUevent)ev);

	if (r == CUDA_SUCCESS)
		return 1;
	return r == CUDA_ERROR_NOT_READY ? 0 : ferry_cuda_errno(r);
}

static void ev_destroy(void *ctx, void *ev)
{
	struct ferry_pool *p = ctx;

	p->cu->cuEventDestroy((CUevent)ev);
}

/* Queue "@waiter waits for @stream's work so far": no host wait. */
static int ev_wait(void *ctx, void *waiter, void *stream)
{
	struct ferry_pool *p = ctx;
	void *ev;
	int err = ev_record(ctx, stream, &ev);

	if (err)
		return err;
	err = ferry_cuda_errno(p->cu->cuStreamWaitEvent((CUstream)waiter, (CUevent)ev, 0));
	/* Destroying an event with waits queued on it is allowed. */
	p->cu->cuEventDestroy((CUevent)ev);
	return err;
}

static const struct ferry_palloc_ops cuda_ops = {
	.record = ev_record, .query = ev_query, .destroy = ev_destroy, .wait = ev_wait,
};

/* ---- CPU pools ---- */

static int cpu_map(struct ferry_pool *p)
{
	void *m = mmap(NULL, p->size, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);

	if (m == MAP_FAILED)
		return -errno;
	p->addr = (uint64_t)(uintptr_t)m;
	return 0;
}

static int cpu_create(struct ferry_pool *p, size_t size)
{
	p->size = ferry_page_round(size);
	p->fd = memfd_create("ferry-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (p->fd < 0)
		return -errno;
	if (ftruncate(p->fd, (off_t)p->size) < 0 ||
	    fcntl(p->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		return -errno;
	return cpu_map(p);
}

static int cpu_import(struct ferry_pool *p, const struct ferry_pool_ref *ref)
{
	struct stat st;
	int seals;

	if (ref->fd < 0 || fstat(ref->fd, &st) < 0)
		return -EBADF;
	/* An fd that could shrink under us would turn reads into SIGBUS. */
	seals = fcntl(ref->fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK) || (uint64_t)st.st_size < ref->size)
		return -EINVAL;
	p->fd = fcntl(ref->fd, F_DUPFD_CLOEXEC, 0);
	if (p->fd < 0)
		return -errno;
	p->size = ref->size;
	return cpu_map(p);
}

/* ---- CUDA pools ---- */

static int vmm_map(struct ferry_pool *p)
{
	struct ferry_cuda *cu = p->cu;
	CUmemAccessDesc acc = {
		.location = { .type = CU_MEM_LOCATION_TYPE_DEVICE, .id = p->device },
		.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
	};
	CUdeviceptr va;
	int err = ferry_cuda_errno(cu->cuMemAddressReserve(&va, p->size, 0, 0, 0));

	if (err)
		return err;
	err = ferry_cuda_errno(cu->cuMemMap(va, p->size, 0, p->handle, 0));
	if (err) {
		cu->cuMemAddressFree(va, p->size);
		return err;
	}
	err = ferry_cuda_errno(cu->cuMemSetAccess(va, p->size, &acc, 1));
	if (err) {
		cu->cuMemUnmap(va, p->size);
		cu->cuMemAddressFree(va, p->size);
		return err;
	}
	p->addr = va;
	return 0;
}

static bool vmm_usable(struct ferry_cuda *cu, int dev)
{
	CUdevice d;
	int vmm = 0, fdh = 0;

	if (getenv("FERRY_POOL_LEGACY_IPC"))
		return false;	/* force the fallback (tests) */
	return cu->cuDeviceGet(&d, dev) == CUDA_SUCCESS &&
	       cu->cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, d) == CUDA_SUCCESS &&
	       cu->cuDeviceGetAttribute(&fdh, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, d) == CUDA_SUCCESS &&
	       vmm && fdh;
}

static int cuda_create(struct ferry_pool *p, size_t size)
{
	struct ferry_cuda *cu = p->cu;
	CUmemAllocationProp prop = {
		.type = CU_MEM_ALLOCATION_TYPE_PINNED,
		.location = { .type = CU_MEM_LOCATION_TYPE_DEVICE, .id = p->device },
		.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
	};
	size_t gran = 0;
	int fd = -1, err;

	if (!vmm_usable(cu, p->device)) {
		CUdeviceptr va;

		p->legacy = true;
		p->size = (size + (2u << 20) - 1) & ~(uint64_t)((2u << 20) - 1);
		err = ferry_cuda_errno(cu->cuMemAlloc(&va, p->size));
		if (err)
			return err;
		p->addr = va;
		return ferry_cuda_errno(cu->cuIpcGetMemHandle(&p->ipc, va));
	}
	err = ferry_cuda_errno(cu->cuMemGetAllocationGranularity(&gran, &prop,
								CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
	if (err)
		return err;
	if (!gran)
		gran = 2u << 20;
	p->size = (size + gran - 1) / gran * gran;
	err = ferry_cuda_errno(cu->cuMemCreate(&p->handle, p->size, &prop, 0));
	if (err)
		return err;
	err = ferry_cuda_errno(cu->cuMemExportToShareableHandle(&fd, p->handle,
								CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
	if (err)
		return err;
	p->fd = fd;
	return vmm_map(p);
}

static int cuda_import(struct ferry_pool *p, const struct ferry_pool_ref *ref)
{
	struct ferry_cuda *cu = p->cu;
	int err;

	p->size = ref->size;
	if (ref->legacy) {
		CUdeviceptr va;
		CUipcMemHandle h;

		p->legacy = true;
		memcpy(&h, ref->ipc, sizeof(h));
		err = ferry_cuda_errno(cu->cuIpcOpenMemHandle(&va, h,
						CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
		if (err)
			return err;
		p->addr = va;
		return 0;
	}
	if (ref->fd < 0)
		return -EBADF;
	err = ferry_cuda_errno(cu->cuMemImportFromShareableHandle(&p->handle,
					(void *)(uintptr_t)ref->fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
	if (err)
		return err;
	return vmm_map(p);
}

static void cuda_release(struct ferry_pool *p)
{
	struct ferry_cuda *cu = p->cu;

	if (!cu || !p->addr) {
		if (cu && p->handle)
			cu->cuMemRelease(p->handle);
		return;
	}
	ferry_cuda_use_device(cu, p->device);
	if (p->legacy) {
		if (p->owner)
			cu->cuMemFree((CUdeviceptr)p->addr);
		else
			cu->cuIpcCloseMemHandle((CUdeviceptr)p->addr);
		return;
	}
	cu->cuMemUnmap((CUdeviceptr)p->addr, p->size);
	cu->cuMemAddressFree((CUdeviceptr)p->addr, p->size);
	cu->cuMemRelease(p->handle);
}

/* ---- common ---- */

static struct ferry_pool *pool_new(enum ferry_pool_kind kind, int device)
{
	struct ferry_pool *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->kind = kind;
	p->device = device;
	p->fd = -1;
	pthread_spin_init(&p->lock, PTHREAD_PROCESS_PRIVATE);
	return p;
}

static int pool_cuda(struct ferry_pool *p)
{
	int err = ferry_cuda_get(&p->cu);

	if (err)
		return err;
	return ferry_cuda_use_device(p->cu, p->device);
}

int ferry_pool_create(enum ferry_pool_kind kind, int device, size_t size,
		      struct ferry_pool **out)
{
	struct ferry_pool *p;
	int err;

	if (!out || !size || size > (1ull << 46) ||
	    (kind != FERRY_POOL_CPU && kind != FERRY_POOL_CUDA) ||
	    (kind == FERRY_POOL_CUDA && device < 0))
		return -EINVAL;
	p = pool_new(kind, kind == FERRY_POOL_CPU ? -1 : device);
	if (!p)
		return -ENOMEM;
	p->owner = true;
	if (kind == FERRY_POOL_CPU) {
		err = cpu_create(p, size);
	} else {
		err = pool_cuda(p);
		if (!err)
			err = cuda_create(p, size);
	}
	if (!err)
		err = ferry_palloc_create(p->size, kind == FERRY_POOL_CPU ? CPU_ALIGN : GPU_ALIGN,
					  kind == FERRY_POOL_CUDA ? &cuda_ops : NULL, p, &p->alloc);
	if (err) {
		ferry_pool_close(p);
		return err;
	}
	*out = p;
	return 0;
}

int ferry_pool_export(const struct ferry_pool *p, struct ferry_pool_ref *ref)
{
	if (!p || !ref)
		return -EINVAL;
	memset(ref, 0, sizeof(*ref));
	ref->kind = p->kind;
	ref->device = p->device;
	ref->size = p->size;
	ref->fd = -1;
	if (p->legacy) {
		ref->legacy = 1;
		memcpy(ref->ipc, &p->ipc, sizeof(p->ipc) < sizeof(ref->ipc) ? sizeof(p->ipc) :
		       sizeof(ref->ipc));
		return 0;
	}
	ref->fd = fcntl(p->fd, F_DUPFD_CLOEXEC, 0);
	return ref->fd < 0 ? -errno : 0;
}

int ferry_pool_import(const struct ferry_pool_ref *ref, struct ferry_pool **out)
{
	struct ferry_pool *p;
	int err;

	if (!ref || !out || !ref->size || ref->size > (1ull << 46) ||
	    (ref->kind != FERRY_POOL_CPU && ref->kind != FERRY_POOL_CUDA) ||
	    (ref->kind == FERRY_POOL_CUDA && ref->device < 0) || ref->legacy > 1 ||
	    (ref->legacy && ref->kind != FERRY_POOL_CUDA))
		return -EINVAL;
	p = pool_new((enum ferry_pool_kind)ref->kind, ref->device);
	if (!p)
		return -ENOMEM;
	if (ref->kind == FERRY_POOL_CPU) {
		err = cpu_import(p, ref);
	} else {
		err = pool_cuda(p);
		if (!err)
			err = cuda_import(p, ref);
	}
	if (err) {
		ferry_pool_close(p);
		return err;
	}
	*out = p;
	return 0;
}

void ferry_pool_close(struct ferry_pool *p)
{
	if (!p)
		return;
	if (p->alloc) {
		if (p->cu)
			ferry_cuda_use_device(p->cu, p->device);
		ferry_palloc_destroy(p->alloc);
	}
	if (p->kind == FERRY_POOL_CPU) {
		if (p->addr)
			munmap((void *)(uintptr_t)p->addr, p->size);
	} else {
		cuda_release(p);
	}
	if (p->fd >= 0)
		close(p->fd);
	pthread_spin_destroy(&p->lock);
	free(p);
}

enum ferry_pool_kind ferry_pool_kind(const struct ferry_pool *p)
{
	return p->kind;
}

size_t ferry_pool_size(const struct ferry_pool *p)
{
	return p->size;
}

uint64_t ferry_pool_addr(const struct ferry_pool *p, uint64_t off, uint64_t len)
{
	if (!p || off > p->size || len > p->size - off)
		return 0;
	return p->addr + off;
}

/* Allocator calls may touch CUDA: the pool's device must be current. */
static int owner_enter(struct ferry_pool *p)
{
	if (!p)
		return -EINVAL;
	if (!p->owner)
		return -EPERM;
	return p->cu ? ferry_cuda_use_device(p->cu, p->device) : 0;
}

int ferry_pool_sub_allocator(struct ferry_pool *p, uint64_t size, struct ferry_palloc **out)
{
	if (!p || !size)
		return -EINVAL;
	return ferry_palloc_create(size, p->kind == FERRY_POOL_CPU ? CPU_ALIGN : GPU_ALIGN,
				   p->cu ? &cuda_ops : NULL, p, out);
}

int ferry_pool_alloc(struct ferry_pool *p, size_t n, void *stream, uint64_t *off)
{
	int err = owner_enter(p);

	if (err)
		return err;
	if (p->kind == FERRY_POOL_CPU && stream)
		return -EINVAL;
	pthread_spin_lock(&p->lock);
	err = ferry_palloc_alloc(p->alloc, n, stream, off);
	pthread_spin_unlock(&p->lock);
	return err;
}

int ferry_pool_record_stream(struct ferry_pool *p, uint64_t off, void *stream)
{
	int err = owner_enter(p);

	if (err)
		return err;
	if (p->kind == FERRY_POOL_CPU && stream)
		return -EINVAL;
	pthread_spin_lock(&p->lock);
	err = ferry_palloc_record_stream(p->alloc, off, stream);
	pthread_spin_unlock(&p->lock);
	return err;
}

int ferry_pool_free(struct ferry_pool *p, uint64_t off)
{
	int err = owner_enter(p);

	if (err)
		return err;
	pthread_spin_lock(&p->lock);
	err = ferry_palloc_free(p->alloc, off);
	pthread_spin_unlock(&p->lock);
	return err;
}

int ferry_pool_usage(struct ferry_pool *p, uint64_t *live, uint64_t *deferred)
{
	struct ferry_palloc_stats st;
	int err = owner_enter(p);

	if (err)
		return err;
	pthread_spin_lock(&p->lock);
	ferry_palloc_stats(p->alloc, &st);
	pthread_spin_unlock(&p->lock);
	if (live)
		*live = st.live;
	if (deferred)
		*deferred = st.deferred;
	return 0;
}
