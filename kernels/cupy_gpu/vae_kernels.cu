// The fused kernels of the CuPy backend: everything in a VAE training step except the GEMMs
// (cuBLAS does those). Each kernel is one pass over its memory; each reduction runs in a fixed
// order (no floating-point atomics), so the same seed gives bitwise-identical losses run to run.
//
// Matrices are row-major float32; "rows" is the batch. Block sizes are compile-time constants
// set by the launcher (kernels/cupy_gpu/launch.py passes them as -D options), so the launcher
// and the kernels cannot disagree about them. Launch geometry per kernel is documented there.
//
// Denormals: CuPy compiles every kernel with -ftz=true (launch.py, CUPY_NVRTC_OPTIONS), so on
// the device a float32 denormal, as an input or a result, is zero; doubles are untouched. The
// host build of this file and the NumPy twins (tests/gpu_verification/) keep denormals. Where
// it matters:
//   - adam: a dead unit's second moment decays through the denormals, step after step. The
//     device flushes it; the explicit flush there makes the host build, the twins and the
//     Numba backend do the same, so all agree bit for bit on the moments. On the device it is
//     redundant.
//   - bce_with_logits, reparameterize_kl: expf underflows into the denormals (|logit| > 87,
//     log-variance < -175) and the device then gives 0 where the host gives < 1.2e-38: a
//     difference below every tolerance, and one that does not build up.
//   - batch_loss sums in double: no flush.
#include "device_math.cuh"

#if !defined(ROW_THREADS) || !defined(COL_TILE) || !defined(ROW_GROUPS) || !defined(LOSS_THREADS)
#error "compile with the launcher's -D options (kernels/cupy_gpu/launch.py: COMPILE_DEFINES)"
#endif

// A grid-stride loop over n elements with a 32-bit unsigned index. The elementwise kernels
// divide each index by a row length (i / cols, i % cols), and NVIDIA GPUs have no integer
// divider: a 64-bit division or modulo is emulated by a long software routine (the compiler
// puts a run-time test for operands that fit in 32 bits in front of each), a 32-bit one is a
// short inline sequence. The launcher refuses a buffer of 2^31 elements or more
// (launch.check_32bit_indices), so n < 2^31 and, with fewer than 2^31 threads in the grid,
// i + stride < 2^32: the index never wraps.
#define GRID_STRIDE(i, n)                                                                  \
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned int)(n);    \
         i += gridDim.x * blockDim.x)

// The step's first kernel: copies the batch's images out of the device-resident data set and
// advances the device-side step counter that Adam's bias correction and the noise generator
// read later in the step (folded in here to save a launch in a latency-bound graph). A null
// step pointer leaves the counter alone (gathers outside training).
// The batch's indices are indices[0 .. rows), or, with a batch cursor (a whole epoch replayed
// from a device-side permutation), indices[*cursor * stride ..]: batch_loss advances the cursor.
extern "C" __global__ void gather_rows(const float* __restrict__ data,
                                       const long long* __restrict__ indices,
                                       const unsigned int* __restrict__ cursor, int stride,
                                       float* __restrict__ out, int rows, int cols,
                                       unsigned int* __restrict__ step) {
    if (step != 0 && blockIdx.x == 0 && threadIdx.x == 0) *step += 1u;
    const long long* batch = indices + (cursor != 0 ? (long long)*cursor * stride : 0);
    const unsigned int width = cols;
    GRID_STRIDE(i, (unsigned int)rows * width) {
        unsigned int r = i / width, c = i - r * width;
        out[i] = data[batch[r] * cols + c];
    }
}

// a = relu(a + bias) in place: the epilogue of a hidden layer's GEMM. NaN stays NaN (a
// comparison, not fmaxf, which would turn it into 0 and hide it from the NaN check).
extern "C" __global__ void bias_relu(float* __restrict__ a, const float* __restrict__ bias,
                                     int rows, int cols) {
    const unsigned int width = cols;
    GRID_STRIDE(i, (unsigned int)rows * width) {
        float v = a[i] + bias[i % width];
        a[i] = v < 0.0f ? 0.0f : v;
    }
}

// heads = [mu | logvar] (rows, 2 latent) from the packed heads GEMM; adds the heads' bias in
// place, then per row: z = mu + exp(logvar / 2) eps, std kept for backward, and
// kl = -1/2 sum(1 + logvar - mu^2 - exp(logvar)). One thread per row (latent <= a few
// hundred), so the row's KL is summed in column order. With generate != 0 the noise is
// drawn here by Philox from (seed, *step, row, column) and written to eps for backward;
// otherwise eps is read (given noise: the agreement gate).
extern "C" __global__ void reparameterize_kl(float* __restrict__ heads,
                                             const float* __restrict__ head_bias,
                                             float* __restrict__ eps, int generate,
                                             unsigned long long seed,
                                             const unsigned int* __restrict__ step,
                                             float* __restrict__ z, float* __restrict__ stdev,
                                             float* __restrict__ kl, int rows, int latent) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    float* mu = heads + (long long)r * 2 * latent;
    float* logvar = mu + latent;
    long long base = (long long)r * latent;
    unsigned int step_now = generate ? *step : 0u;
    float total = 0.0f;
    for (int j0 = 0; j0 < latent; j0 += 4) {
        float noise[4];
        if (generate) normal4(seed, step_now, (unsigned int)r, (unsigned int)(j0 / 4), noise);
        for (int k = 0; k < 4 && j0 + k < latent; ++k) {
            int j = j0 + k;
            float m = mu[j] + head_bias[j];
            float lv = logvar[j] + head_bias[latent + j];
            mu[j] = m;
            logvar[j] = lv;
            float e;
            if (generate) {
                e = noise[k];
                eps[base + j] = e;
            } else {
                e = eps[base + j];
            }
            float s = expf(0.5f * lv);
            stdev[base + j] = s;
            z[base + j] = m + s * e;
            total += 1.0f + lv - m * m - s * s;
        }
    }
    kl[r] = -0.5f * total;
}

// Per image (one block per row): adds the output bias to the logits in place, then the
// sigmoid + BCE-with-logits of every pixel, d loss / d logits = (sigmoid - x) / batch, and the
// image's summed BCE, reduced in shared memory in a fixed tree order.
extern "C" __global__ void sigmoid_bce(float* __restrict__ logits,
                                       const float* __restrict__ out_bias,
                                       const float* __restrict__ x, float inv_batch,
                                       float* __restrict__ dlogits, float* __restrict__ bce,
                                       int cols) {
    __shared__ float partial[ROW_THREADS];
    long long row = (long long)blockIdx.x * cols;
    float total = 0.0f;
    for (int c = threadIdx.x; c < cols; c += ROW_THREADS) {
        float l = logits[row + c] + out_bias[c];
        logits[row + c] = l;
        float grad;
        total += bce_with_logits(l, x[row + c], &grad);
        dlogits[row + c] = grad * inv_batch;
    }
    partial[threadIdx.x] = total;
    __syncthreads();
    for (int half = ROW_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) bce[blockIdx.x] = partial[0];
}

// Column sums over the batch (a bias gradient), optionally fused with ReLU's backward:
// grad *= (act > 0) in place, from the layer's output. Grid (column tiles, row chunks), block
// (COL_TILE, ROW_GROUPS): block (bx, by) takes COL_TILE columns of row chunk by, the chunks
// ceil(rows / gridDim.y) rows each (the last fewer, or none). Thread (x, y) sums rows y,
// y + ROW_GROUPS, ... of the chunk in order, then row y = 0 adds the ROW_GROUPS partial sums
// in order and writes the chunk's sum of column c to sums[by * cols + c]. With one chunk that
// is the column sum; with more, column_sum_chunks adds the chunks' sums in chunk order. A
// fixed summation order for a given grid, no atomics: the same bits run to run.
//
// Why chunks: one block per COL_TILE columns is 16 blocks for a 512-wide layer (2 for
// 2z = 40), so at batch 2048 each thread would walk 64 rows while most of the GPU idles; the
// launcher picks the chunks from the batch and the multiprocessor count (launch.column_tiles).
// Why not a cuBLAS GEMV against a vector of ones: its summation order is cuBLAS's, unknown
// to the host build and the twins that check these kernels bit for bit; it could not fuse the
// ReLU-backward mask, which would cost another pass over grad; and it needs a ones vector.
template <bool RELU>
__device__ __forceinline__ void column_sum_rows(float* __restrict__ grad,
                                                const float* __restrict__ act,
                                                float* __restrict__ sums, int rows, int cols) {
    __shared__ float partial[ROW_GROUPS][COL_TILE + 1];  // +1: no shared-memory bank conflicts
    int c = blockIdx.x * COL_TILE + threadIdx.x;
    int chunk = (rows - 1) / (int)gridDim.y + 1;
    int first = (int)blockIdx.y * chunk;
    int end = rows - first < chunk ? rows : first + chunk;
    float total = 0.0f;
    if (c < cols) {
        for (int r = first + threadIdx.y; r < end; r += ROW_GROUPS) {
            long long i = (long long)r * cols + c;
            float g = grad[i];
            if (RELU) {
                g = act[i] > 0.0f ? g : 0.0f;
                grad[i] = g;
            }
            total += g;
        }
    }
    partial[threadIdx.y][threadIdx.x] = total;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float sum = 0.0f;
        for (int k = 0; k < ROW_GROUPS; ++k) sum += partial[k][threadIdx.x];
        sums[(long long)blockIdx.y * cols + c] = sum;
    }
}

extern "C" __global__ void relu_backward_bias_grad(float* __restrict__ grad,
                                                   const float* __restrict__ act,
                                                   float* __restrict__ sums, int rows,
                                                   int cols) {
    column_sum_rows<true>(grad, act, sums, rows, cols);
}

extern "C" __global__ void column_sum(const float* __restrict__ a, float* __restrict__ sums,
                                      int rows, int cols) {
    // RELU=false never writes through the pointer: the cast only shares the template.
    column_sum_rows<false>(const_cast<float*>(a), 0, sums, rows, cols);
}

// The second pass of a column sum split into row chunks: out[c] = the chunks' sums of column
// c (chunks rows of cols, column_sum_rows' output) added in chunk order, first to last.
extern "C" __global__ void column_sum_chunks(const float* __restrict__ sums,
                                             float* __restrict__ out, int chunks, int cols) {
    GRID_STRIDE(c, cols) {
        float total = sums[c];
        for (int k = 1; k < chunks; ++k) total += sums[(long long)k * cols + c];
        out[c] = total;
    }
}

// d loss / d [mu | logvar] from the decoder's dz and the KL term, one pass over (rows, latent):
//   dmu = dz + beta/B mu,  dlogvar = dz eps std / 2 + beta/B (exp(logvar) - 1) / 2.
extern "C" __global__ void reparameterize_kl_backward(const float* __restrict__ heads,
                                                      const float* __restrict__ eps,
                                                      const float* __restrict__ stdev,
                                                      const float* __restrict__ dz,
                                                      float beta_over_batch,
                                                      float* __restrict__ dheads, int rows,
                                                      int latent) {
    const unsigned int width = latent;
    GRID_STRIDE(i, (unsigned int)rows * width) {
        unsigned int r = i / width, j = i - r * width;
        unsigned int head = r * 2 * width + j;
        float s = stdev[i];
        dheads[head] = dz[i] + beta_over_batch * heads[head];
        dheads[head + latent] = 0.5f * (dz[i] * eps[i] * s + beta_over_batch * (s * s - 1.0f));
    }
}

// Adam's bias corrections for the step being taken, computed once per step by one thread
// (not by each of the Adam kernel's threads): corrections[0] = -lr / (1 - beta1^t) and
// corrections[1] = sqrt(1 - beta2^t), in double, rounded to float. t is the device step
// counter (gather_rows advanced it earlier in the step), so a replayed graph stays correct.
// t is at least 1: before any step (t = 0; Adam timed alone on a fresh state) 1 - beta^0 = 0
// would make the step infinite and every weight NaN.
extern "C" __global__ void adam_bias_corrections(const unsigned int* __restrict__ step,
                                                 double lr, double beta1, double beta2,
                                                 float* __restrict__ corrections) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double t = (double)(*step > 1u ? *step : 1u);
    corrections[0] = (float)(-lr / (1.0 - pow(beta1, t)));
    corrections[1] = (float)sqrt(1.0 - pow(beta2, t));
}

struct AdamStep {
    float one_minus_beta1, beta2, one_minus_beta2, eps;
    float neg_step_size, bias_correction2_sqrt;  // adam_bias_corrections' output
};

// One parameter's update, PyTorch's Adam (default single-tensor form). Moments below the
// smallest normal float are flushed to zero, as in the Numba backend: redundant on the device
// (-ftz=true), needed for the host build and the twins to agree with it (top of this file).
__device__ __forceinline__ void adam_update(float g, float& p, float& m, float& v,
                                            const AdamStep& s) {
    const float tiny = 1.17549435e-38f;
    float mi = m + s.one_minus_beta1 * (g - m);  // torch's lerp(m, g, 1 - beta1)
    float vi = s.beta2 * v + s.one_minus_beta2 * g * g;
    mi = fabsf(mi) >= tiny ? mi : 0.0f;
    vi = vi >= tiny ? vi : 0.0f;
    m = mi;
    v = vi;
    p += s.neg_step_size * (mi / (sqrtf(vi) / s.bias_correction2_sqrt + s.eps));
}

// Adam over the whole flat parameter buffer in one launch, four parameters per iteration with
// 16-byte loads and stores (the flat buffers are 256-byte aligned: cudaMalloc's alignment), on
// a grid sized to the device rather than to the ~835k parameters (launch.across_the_device):
// each thread strides over the buffer. A memory-bound pass: 16 bytes read and 12 written per
// parameter. The last n % 4 parameters are done one per thread.
extern "C" __global__ void adam(float* __restrict__ params, const float* __restrict__ grads,
                                float* __restrict__ m, float* __restrict__ v, int n,
                                float one_minus_beta1, float beta2, float one_minus_beta2,
                                float eps, const float* __restrict__ corrections) {
    const AdamStep s = {one_minus_beta1, beta2, one_minus_beta2, eps, corrections[0],
                        corrections[1]};
    float4* p4 = reinterpret_cast<float4*>(params);
    const float4* g4 = reinterpret_cast<const float4*>(grads);
    float4* m4 = reinterpret_cast<float4*>(m);
    float4* v4 = reinterpret_cast<float4*>(v);
    const unsigned int quads = n / 4;
    GRID_STRIDE(i, quads) {
        float4 p = p4[i], g = g4[i], mi = m4[i], vi = v4[i];
        adam_update(g.x, p.x, mi.x, vi.x, s);
        adam_update(g.y, p.y, mi.y, vi.y, s);
        adam_update(g.z, p.z, mi.z, vi.z, s);
        adam_update(g.w, p.w, mi.w, vi.w, s);
        p4[i] = p;
        m4[i] = mi;
        v4[i] = vi;
    }
    unsigned int tail = 4 * quads + blockIdx.x * blockDim.x + threadIdx.x;
    if (tail < (unsigned int)n) adam_update(grads[tail], params[tail], m[tail], v[tail], s);
}

// The batch's mean reconstruction, KL and loss (reconstruction + beta KL), summed in double
// in a fixed order by one block: out = {reconstruction, kl, loss}. With a batch cursor (an
// epoch replayed on the device) they go to row *cursor of out, and the cursor advances: the
// step's last kernel, so the next step's gather reads the next batch.
extern "C" __global__ void batch_loss(const float* __restrict__ bce, const float* __restrict__ kl,
                                      int rows, double beta, double* __restrict__ out,
                                      unsigned int* __restrict__ cursor) {
    __shared__ double rec[LOSS_THREADS];
    __shared__ double div[LOSS_THREADS];
    double r_sum = 0.0, k_sum = 0.0;
    for (int i = threadIdx.x; i < rows; i += LOSS_THREADS) {
        r_sum += (double)bce[i];
        k_sum += (double)kl[i];
    }
    rec[threadIdx.x] = r_sum;
    div[threadIdx.x] = k_sum;
    __syncthreads();
    for (int half = LOSS_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            rec[threadIdx.x] += rec[threadIdx.x + half];
            div[threadIdx.x] += div[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        double* row = out + (cursor != 0 ? 3 * (long long)*cursor : 0);
        row[0] = rec[0] / rows;
        row[1] = div[0] / rows;
        row[2] = (rec[0] + beta * div[0]) / rows;
        if (cursor != 0) *cursor += 1u;
    }
}

// Nothing at all: a graph of these measures what one graph node costs, the floor under a
// replayed step of N kernels (the harness reports it beside the step time).
extern "C" __global__ void empty_kernel() {}
