// The slice of CUDA's execution model that kernels/cupy_gpu/vae_kernels.cu uses, on the host,
// so the CPU tests run the kernel source itself (the exact text and -D options CuPy gets)
// rather than only its NumPy twins. Force-included (g++ -include) ahead of that source;
// tests/gpu_verification/cuda_on_host.py builds it and launches kernels from Python.
//
// A launch runs one block at a time, so a block's __shared__ arrays can be function statics.
// The threads of a block run as fibers on the calling thread: a thread that calls
// __syncthreads yields, and the block proceeds in rounds, each resuming every waiting thread
// once, so no thread passes barrier k before all have reached it. A fiber is entered once per
// launch through makecontext and switched with _setjmp/_longjmp afterwards (no system call per
// switch), and runs every block of the launch. A block whose first thread finishes without a
// barrier runs its other threads as plain calls (grid-stride kernels: fast).
// Threads, and blocks, can be run in reverse order: a kernel whose result depends on the
// order (a missing barrier, a race between blocks) then gives a different answer.
#pragma once

#include <math.h>
#include <setjmp.h>
#include <ucontext.h>

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // one block at a time: a static is the running block's memory

struct dim3 {
    unsigned int x, y, z;
};

// CUDA's vector type, 16-byte aligned as on the device: a misaligned float4 access is a fault
// there, and UBSan's alignment check reports it here.
struct alignas(16) float4 {
    float x, y, z, w;
};

// Set before each thread runs; one OS thread runs them all, so plain globals suffice.
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace cuda_on_host {

// __syncthreads outside fiber mode: a barrier in a block whose first thread passed none.
struct DivergentBarrier : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr size_t kStackBytes = 64 * 1024;

struct Fiber {
    jmp_buf jump;  // where it waits: at a barrier, or done with the block
    dim3 index;
    bool done;     // finished the current block
    bool started;  // entered its stack this launch
};

inline jmp_buf scheduler;
inline std::vector<Fiber> fibers;
inline std::vector<char> stacks;
inline size_t running = 0;     // the fiber being resumed
inline bool in_fiber = false;  // false while threads run as plain calls
inline bool barrier_seen = false;
inline const std::function<void()>* body = nullptr;
inline std::string last_error;

inline void yield() {
    if (!_setjmp(fibers[running].jump)) _longjmp(scheduler, 1);
}

// A fiber's life: the kernel body for one block after another, pausing at each barrier and
// after each block. Never returns; the launch abandons it when it ends.
inline void fiber_main() {
    for (;;) {
        (*body)();
        fibers[running].done = true;
        yield();
    }
}

inline void resume(size_t i) {
    running = i;
    threadIdx = fibers[i].index;
    if (_setjmp(scheduler)) return;  // the fiber yielded
    if (fibers[i].started) _longjmp(fibers[i].jump, 1);
    fibers[i].started = true;
    ucontext_t entry;
    getcontext(&entry);
    entry.uc_stack.ss_sp = stacks.data() + i * kStackBytes;
    entry.uc_stack.ss_size = kStackBytes;
    entry.uc_link = nullptr;
    makecontext(&entry, fiber_main, 0);
    setcontext(&entry);
}

inline void start(size_t i, dim3 index) {
    fibers[i].index = index;
    fibers[i].done = false;
    resume(i);
}

inline std::vector<dim3> indices(dim3 extent, bool reverse) {
    std::vector<dim3> all;
    for (unsigned z = 0; z < extent.z; ++z)
        for (unsigned y = 0; y < extent.y; ++y)
            for (unsigned x = 0; x < extent.x; ++x) all.push_back({x, y, z});
    if (reverse) return std::vector<dim3>(all.rbegin(), all.rend());
    return all;
}

inline void run_block(const std::vector<dim3>& threads) {
    // The first thread tells whether this block meets barriers at all.
    in_fiber = true;
    barrier_seen = false;
    start(0, threads[0]);
    if (fibers[0].done && !barrier_seen) {
        in_fiber = false;
        for (size_t i = 1; i < threads.size(); ++i) {
            threadIdx = threads[i];
            (*body)();
        }
        return;
    }
    for (size_t i = 1; i < threads.size(); ++i) start(i, threads[i]);
    for (;;) {  // every live thread now waits at the same barrier, or all are done
        size_t done = 0;
        for (size_t i = 0; i < threads.size(); ++i) done += fibers[i].done;
        if (done == threads.size()) return;
        if (done != 0)
            throw DivergentBarrier(
                "__syncthreads reached by some threads of a block but not others (undefined "
                "behaviour in CUDA; it hangs or corrupts on a GPU)");
        for (size_t i = 0; i < threads.size(); ++i) resume(i);
    }
}

// Runs ``kernel`` over the grid; 0 on success, else 1 with last_error set.
inline int launch(const unsigned int* dims, int reverse, const std::function<void()>& kernel) {
    gridDim = {dims[0], dims[1], dims[2]};
    blockDim = {dims[3], dims[4], dims[5]};
    try {
        if (gridDim.x * gridDim.y * gridDim.z == 0 || blockDim.x * blockDim.y * blockDim.z == 0)
            throw std::invalid_argument("empty grid or block: CUDA refuses the launch");
        std::vector<dim3> threads = indices(blockDim, reverse != 0);
        fibers.assign(threads.size(), Fiber{});  // fresh: none started
        stacks.resize(threads.size() * kStackBytes);
        body = &kernel;
        for (dim3 block : indices(gridDim, reverse != 0)) {
            blockIdx = block;
            run_block(threads);
        }
    } catch (const std::exception& error) {
        last_error = error.what();
        in_fiber = false;
        return 1;
    }
    in_fiber = false;
    return 0;
}

}  // namespace cuda_on_host

inline void __syncthreads() {
    if (!cuda_on_host::in_fiber)
        throw cuda_on_host::DivergentBarrier(
            "__syncthreads in a block whose first thread finished without one (a barrier "
            "under a condition that differs between threads)");
    cuda_on_host::barrier_seen = true;
    cuda_on_host::yield();
}
