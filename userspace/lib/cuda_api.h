/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The CUDA driver API, loaded at run time.  libferry has no link-time CUDA
 * dependency: ferry_cuda_get() dlopens libcuda.so.1 ($FERRY_CUDA_LIB
 * overrides the name, for tests) once per process and resolves every
 * entry point below by the versioned name cuda.h maps it to (cuMemAlloc ->
 * cuMemAlloc_v2), so calls read as in CUDA code: cu->cuMemAlloc(...).
 *
 * CUDA state does not survive fork(): the broker never touches it; each
 * helper (and each child using a GPU pool) initialises its own.
 */
#ifndef FERRY_CUDA_API_H
#define FERRY_CUDA_API_H

#include <cuda.h>

#define FERRY_CUDA_FUNCS(X)						\
	X(cuInit) X(cuDriverGetVersion) X(cuGetErrorString)		\
	X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetAttribute)	\
	X(cuDeviceGetPCIBusId)	\
	X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease)	\
	X(cuCtxSetCurrent) X(cuCtxSynchronize)				\
	X(cuMemGetAllocationGranularity) X(cuMemCreate) X(cuMemRelease)	\
	X(cuMemExportToShareableHandle) X(cuMemImportFromShareableHandle) \
	X(cuMemAddressReserve) X(cuMemAddressFree) X(cuMemMap)		\
	X(cuMemUnmap) X(cuMemSetAccess)					\
	X(cuStreamCreate) X(cuStreamDestroy) X(cuStreamSynchronize)	\
	X(cuStreamWaitEvent) X(cuLaunchHostFunc)			\
	X(cuEventCreate) X(cuEventRecord) X(cuEventQuery)		\
	X(cuEventDestroy) X(cuEventSynchronize)				\
	X(cuMemcpyHtoDAsync) X(cuMemcpyDtoHAsync) X(cuMemcpyDtoDAsync)	\
	X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemsetD8Async)		\
	X(cuMemHostRegister) X(cuMemHostUnregister)			\
	X(cuMemAllocHost) X(cuMemFreeHost) X(cuMemAlloc) X(cuMemFree)	\
	X(cuIpcGetMemHandle) X(cuIpcOpenMemHandle) X(cuIpcCloseMemHandle)	\
	X(cuModuleLoadData) X(cuModuleGetFunction) X(cuModuleUnload)	\
	X(cuLaunchKernel)

struct ferry_cuda {
	void *lib;
	int driver_version;
	int ndevices;
#define FERRY_CUDA_FIELD(f) __typeof__(&f) f;
	FERRY_CUDA_FUNCS(FERRY_CUDA_FIELD)
#undef FERRY_CUDA_FIELD
};

/*
 * The process's CUDA driver, loaded and initialised on first use: 0 and
 * *@out, or -ENODEV (no library, a library without the entry points, no
 * driver or no GPU); ferry_cuda_why() then says which, in words.
 */
int ferry_cuda_get(struct ferry_cuda **out);
const char *ferry_cuda_why(void);
/* A CUresult as a negative errno (0 for CUDA_SUCCESS). */
int ferry_cuda_errno(CUresult r);
/* Make @dev's primary context current on this thread; 0 or -errno. */
int ferry_cuda_use_device(struct ferry_cuda *cu, int dev);

#endif /* FERRY_CUDA_API_H */
