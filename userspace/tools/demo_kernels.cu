// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ferry-demo's model step on the GPU: one dense layer, y = x W + b (ReLU
 * optional), for a batch of rows.  Thread o of block row n computes
 * y[n][o], summing in the same order as the CPU reference (k ascending,
 * starting from b[o]), so the two agree to rounding.  W is [in][out], so
 * the threads of a warp read consecutive weights.  Built to PTX at build
 * time and loaded through the driver API (no CUDA runtime).
 */
extern "C" __global__ void ferry_demo_dense(const float *x, const float *w, const float *b,
					    float *y, int in, int out, int relu)
{
	int o = blockIdx.x * blockDim.x + threadIdx.x;
	int n = blockIdx.y;

	if (o >= out)
		return;
	const float *xn = x + (size_t)n * in;
	float acc = b[o];

	for (int k = 0; k < in; k++)
		acc += xn[k] * w[(size_t)k * out + o];
	y[(size_t)n * out + o] = relu && acc < 0.f ? 0.f : acc;
}
