// Per-element math of the CuPy backend's kernels, written once for the device and the host.
//
// Everything here is a pure function of its arguments, so the same text is compiled three
// ways: by NVRTC inside vae_kernels.cu (on a GPU), by nvcc when CI compile-checks the kernels,
// and by the host C++ compiler for the CPU tests (tests/test_cupy_device_math.py), which check
// it against NumPy and against Philox's published known-answer vectors. No headers: NVRTC
// has no C library, and the host build includes <math.h> itself before this file.
#pragma once

#if defined(__CUDACC__)
#define VKB_FN __host__ __device__ __forceinline__
#else
#define VKB_FN static inline
#endif

// Binary cross-entropy of one pixel from its logit l and target t, stable for any |l|:
//   BCE = max(l, 0) - l t + log1p(e),  e = exp(-|l|)   (never overflows)
// and its gradient sigmoid(l) - t, with sigmoid = 1 / (1 + e) for l >= 0, e / (1 + e) else,
// so neither branch divides large by large. Returns the loss, stores the gradient.
VKB_FN float bce_with_logits(float l, float t, float* grad) {
    float e = expf(-fabsf(l));
    float inv = 1.0f / (1.0f + e);
    float s = l >= 0.0f ? inv : e * inv;
    *grad = s - t;
    return fmaxf(l, 0.0f) - l * t + log1pf(e);
}

// ---- Philox4x32-10 (Salmon et al., SC'11): a counter-based generator. -----------------------
// The noise of (seed, step, row, chunk) is a pure function of those numbers, so a replayed
// CUDA graph draws fresh noise every step (the step counter lives in device memory) and any
// element can be recomputed anywhere, in any order.
struct Philox4 {
    unsigned int v[4];
};

VKB_FN unsigned int mul_hi_u32(unsigned int a, unsigned int b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return (unsigned int)(((unsigned long long)a * b) >> 32);
#endif
}

VKB_FN Philox4 philox4x32_10(Philox4 ctr, unsigned int key0, unsigned int key1) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const unsigned int W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        unsigned int hi0 = mul_hi_u32(M0, ctr.v[0]), lo0 = M0 * ctr.v[0];
        unsigned int hi1 = mul_hi_u32(M1, ctr.v[2]), lo1 = M1 * ctr.v[2];
        Philox4 next;
        next.v[0] = hi1 ^ ctr.v[1] ^ key0;
        next.v[1] = lo1;
        next.v[2] = hi0 ^ ctr.v[3] ^ key1;
        next.v[3] = lo0;
        ctr = next;
        key0 += W0;
        key1 += W1;
    }
    return ctr;
}

// A uniform float in the open interval (0, 1) from 23 random bits: never 0 (log() stays
// finite), never 1. Every value (k + 1/2) 2^-23 is exact in float32; with 24 bits the + 1/2
// would round near 1 and the top value would become exactly 1.0.
VKB_FN float uniform_open(unsigned int bits) {
    return ((float)(bits >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

// Four standard normals (two Box-Muller pairs) for reparameterization noise. The counter is
// (chunk of four latent columns, row, step, stream tag); the key is the 64-bit seed.
VKB_FN void normal4(unsigned long long seed, unsigned int step, unsigned int row,
                    unsigned int chunk, float out[4]) {
    Philox4 ctr;
    ctr.v[0] = chunk;
    ctr.v[1] = row;
    ctr.v[2] = step;
    ctr.v[3] = 0x5EEDu;  // tags this use of the generator (noise for z)
    Philox4 bits = philox4x32_10(ctr, (unsigned int)seed, (unsigned int)(seed >> 32));
    const float two_pi = 6.283185307179586f;
    for (int pair = 0; pair < 2; ++pair) {
        float radius = sqrtf(-2.0f * logf(uniform_open(bits.v[2 * pair])));
        float angle = two_pi * uniform_open(bits.v[2 * pair + 1]);
        out[2 * pair] = radius * cosf(angle);
        out[2 * pair + 1] = radius * sinf(angle);
    }
}
