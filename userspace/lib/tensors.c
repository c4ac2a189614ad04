// SPDX-License-Identifier: LGPL-2.1-or-later
/* Tensor entries (struct ferry_tensor): element sizes and the shape check. */
#include <errno.h>

#include "internal.h"

size_t ferry_dtype_size(unsigned int dtype)
{
	switch (dtype) {
	case FERRY_DT_BOOL: case FERRY_DT_U8: case FERRY_DT_I8:
		return 1;
	case FERRY_DT_U16: case FERRY_DT_I16: case FERRY_DT_F16: case FERRY_DT_BF16:
		return 2;
	case FERRY_DT_U32: case FERRY_DT_I32: case FERRY_DT_F32:
		return 4;
	case FERRY_DT_U64: case FERRY_DT_I64: case FERRY_DT_F64:
		return 8;
	}
	return 0;
}

/*
 * Every field as the header says, and the elements the shape and strides
 * reach inside nbytes: contiguous (all strides 0) needs exactly the
 * product of the shape; strided needs the farthest element inside.
 */
int ferry_tensor_check(const struct ferry_tensor *t)
{
	size_t es = ferry_dtype_size(t->dtype);
	uint64_t count = 1, last = 0;
	bool strided = false;

	if (!es || t->where > FERRY_IN_POOL || t->ndim > FERRY_TENSOR_NDIM || t->flags ||
	    t->reserved || t->reserved2 || t->nbytes == 0)
		return -EINVAL;
	for (unsigned int k = 0; k < FERRY_TENSOR_NDIM; k++) {
		if (k >= t->ndim) {
			if (t->shape[k] || t->strides[k])
				return -EINVAL;
			continue;
		}
		if (t->shape[k] <= 0 || t->strides[k] < 0)
			return -EINVAL;
		strided |= t->strides[k] != 0;
		if (__builtin_mul_overflow(count, (uint64_t)t->shape[k], &count))
			return -EINVAL;
	}
	if (!strided) {
		uint64_t bytes;

		if (__builtin_mul_overflow(count, es, &bytes) || bytes != t->nbytes)
			return -EINVAL;
		return 0;
	}
	for (unsigned int k = 0; k < t->ndim; k++) {
		uint64_t step;

		if (__builtin_mul_overflow((uint64_t)(t->shape[k] - 1), (uint64_t)t->strides[k],
					   &step) || __builtin_add_overflow(last, step, &last))
			return -EINVAL;
	}
	/* The last element's end: (last + 1) elements from the start. */
	if (__builtin_add_overflow(last, 1, &last) || __builtin_mul_overflow(last, es, &last) ||
	    last > t->nbytes)
		return -EINVAL;
	return 0;
}
