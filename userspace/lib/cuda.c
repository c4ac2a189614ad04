// SPDX-License-Identifier: LGPL-2.1-or-later
/* Loading the CUDA driver at run time (see cuda_api.h). */
#include "cuda_api.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"

#define STR_(x) #x
#define XSTR(x) STR_(x)	/* expands cuda.h's renames first: "cuMemAlloc_v2" */

static struct ferry_cuda the_cuda;
static int the_err = -ENODEV;
static char the_why[256] = "not loaded yet";
static pthread_once_t once = PTHREAD_ONCE_INIT;

#define FERRY_CUDA_MAX_DEVICES 64
static CUcontext ctxs[FERRY_CUDA_MAX_DEVICES];
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;

static void load(void)
{
	const char *name = getenv("FERRY_CUDA_LIB");
	struct ferry_cuda *cu = &the_cuda;
	CUresult r;

	if (!name || !*name)
		name = "libcuda.so.1";
	cu->lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!cu->lib) {
		snprintf(the_why, sizeof(the_why), "cannot load %s (no CUDA driver): %s", name,
			 dlerror());
		return;
	}
#define FERRY_CUDA_RESOLVE(f)							\
	cu->f = (__typeof__(cu->f))dlsym(cu->lib, XSTR(f));			\
	if (!cu->f) {								\
		snprintf(the_why, sizeof(the_why), "%s has no %s: not a usable CUDA driver", \
			 name, XSTR(f));					\
		goto fail;							\
	}
	FERRY_CUDA_FUNCS(FERRY_CUDA_RESOLVE)
#undef FERRY_CUDA_RESOLVE
	r = cu->cuInit(0);
	if (r != CUDA_SUCCESS) {
		const char *s = NULL;

		cu->cuGetErrorString(r, &s);
		snprintf(the_why, sizeof(the_why), "cuInit failed: %s (%d)", s ? s : "?", (int)r);
		goto fail;
	}
	cu->cuDriverGetVersion(&cu->driver_version);
	if (cu->cuDeviceGetCount(&cu->ndevices) != CUDA_SUCCESS || cu->ndevices < 1) {
		snprintf(the_why, sizeof(the_why), "CUDA driver %d sees no GPU",
			 cu->driver_version);
		goto fail;
	}
	snprintf(the_why, sizeof(the_why), "CUDA driver %d, %d GPU(s)", cu->driver_version,
		 cu->ndevices);
	the_err = 0;
	return;
fail:
	dlclose(cu->lib);
	memset(cu, 0, sizeof(*cu));
}

int ferry_cuda_get(struct ferry_cuda **out)
{
	pthread_once(&once, load);
	if (the_err)
		return the_err;
	*out = &the_cuda;
	return 0;
}

const char *ferry_cuda_why(void)
{
	pthread_once(&once, load);
	return the_why;
}

int ferry_cuda_errno(CUresult r)
{
	switch (r) {
	case CUDA_SUCCESS:
		return 0;
	case CUDA_ERROR_OUT_OF_MEMORY:
		return -ENOMEM;
	case CUDA_ERROR_INVALID_VALUE:
	case CUDA_ERROR_INVALID_HANDLE:
		return -EINVAL;
	case CUDA_ERROR_NO_DEVICE:
	case CUDA_ERROR_INVALID_DEVICE:
	case CUDA_ERROR_NOT_INITIALIZED:
	case CUDA_ERROR_DEINITIALIZED:
		return -ENODEV;
	case CUDA_ERROR_NOT_SUPPORTED:
		return -EOPNOTSUPP;
	case CUDA_ERROR_NOT_READY:
		return -EBUSY;
	case CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:
		return -EEXIST;
	case CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED:
		return -ENOENT;
	default:
		return -EIO;
	}
}

int ferry_cuda_use_device(struct ferry_cuda *cu, int dev)
{
	CUdevice d;
	CUcontext ctx;
	int err;

	if (dev < 0 || dev >= cu->ndevices || dev >= FERRY_CUDA_MAX_DEVICES)
		return -ENODEV;
	pthread_mutex_lock(&ctx_lock);
	ctx = ctxs[dev];
	if (!ctx) {
		err = ferry_cuda_errno(cu->cuDeviceGet(&d, dev));
		/* The primary context, shared with the CUDA runtime; kept for
		 * the life of the process (retained once). */
		if (!err)
			err = ferry_cuda_errno(cu->cuDevicePrimaryCtxRetain(&ctx, d));
		if (err) {
			pthread_mutex_unlock(&ctx_lock);
			return err;
		}
		ctxs[dev] = ctx;
	}
	pthread_mutex_unlock(&ctx_lock);
	return ferry_cuda_errno(cu->cuCtxSetCurrent(ctx));
}

int ferry_gpu_count(void)
{
	struct ferry_cuda *cu;
	int err = ferry_cuda_get(&cu);

	return err ? err : cu->ndevices;
}

const char *ferry_gpu_status(void)
{
	return ferry_cuda_why();
}
