// SPDX-License-Identifier: GPL-2.0
/*
 * notcuda.c - a shared object that is not a CUDA driver, and needs no other
 * library: pool.c's test points FERRY_CUDA_LIB at it.  (It used to point
 * at libc.so.6, which a static test binary cannot load safely: on the GPU
 * machine's newer glibc that died with SIGFPE.)
 */
int ferry_not_cuda(void);

int ferry_not_cuda(void)
{
	return 0;
}
