// The CUDA runtime and device built-ins a kernel needs, on the host: with this directory first on the
// include path, `g++ -x c++ raster_cuda.cu` compiles the real kernel source as ordinary C++ and its
// launches run on the CPU (simulator.cpp). Tests only; nothing here ships.
//
// - __global__/__device__/__host__ are empty; threadIdx/blockIdx/blockDim/gridDim are globals that the
//   simulator sets before it runs each simulated thread.
// - A launch (CUDA_LAUNCH, see raster_cuda.cu) is checked against the hardware limits of sm_80/sm_90;
//   a bad configuration runs nothing and is reported by cudaGetLastError, as on a GPU.
// - The 32 lanes of a warp run as fibers: a lane that reaches __ballot_sync/__shfl_sync waits until every
//   live lane of its warp has reached one; the simulator aborts with a message unless they all wait on the
//   same intrinsic with the same mask and the mask names exactly the live lanes.
// - Only what the kernel uses is here: a new intrinsic in the kernel fails this build, loudly.
#pragma once

#include <stdint.h>
#include <string.h>

#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidConfiguration = 9,
};

// Returns the first error since the last call and resets it, as the CUDA runtime does.
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

// ---- device functions --------------------------------------------------------------------------------
// One OS thread runs every simulated thread, and a fiber switch happens only inside a warp intrinsic, so
// a read-modify-write is atomic here.
inline int atomicMin(int* address, int value) {
    const int old = *address;
    if (value < old) *address = value;
    return old;
}

inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, sizeof(i));
    return i;
}

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof(f));
    return f;
}

// IEEE single-precision products and quotients rounded to nearest: what the *_rn intrinsics promise.
// The shim is compiled with -ffp-contract=off, so no FMA can absorb these either.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

inline int __ffs(int x) { return __builtin_ffs(x); }

namespace cuda_on_cpu {

// The warp intrinsics' common part: deposits this lane's operand and waits for the whole warp.
unsigned ballot(unsigned mask, bool predicate);
uint64_t shuffle(unsigned mask, uint64_t bits, int source_lane);

// Runs `thread` once for every thread of the grid (blocks, then warps, lanes as fibers) after checking
// the configuration against the hardware limits; an invalid one runs nothing and sets the last error.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread);

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t, Args&&... args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
    // The device receives copies of the arguments; each simulated thread gets its own copy of those.
    const std::tuple<std::decay_t<Params>...> parameters(std::forward<Args>(args)...);
    run_grid(grid, block, [&] { std::apply(kernel, parameters); });
}

}  // namespace cuda_on_cpu

inline unsigned __ballot_sync(unsigned mask, int predicate) { return cuda_on_cpu::ballot(mask, predicate != 0); }

template <class T>
T __shfl_sync(unsigned mask, T value, int source_lane) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(uint64_t), "unsupported type");
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof(T));
    bits = cuda_on_cpu::shuffle(mask, bits, source_lane);
    T result;
    memcpy(&result, &bits, sizeof(T));
    return result;
}

#define CUDA_LAUNCH(kernel, grid, block, stream, ...) cuda_on_cpu::launch(kernel, grid, block, stream, __VA_ARGS__)
