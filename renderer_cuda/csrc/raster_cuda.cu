// CUDA rasterization kernel.
//
// One thread per (image, triangle) does the triangle setup. A triangle whose pixel box is small (the
// usual case for a hand mesh at 64x64: about one pixel per triangle) is sampled by its own thread. The
// few large ones are sampled cooperatively: the warp votes (ballot), then for each large triangle all
// 32 lanes take its setup by shuffles and stride through its box together. Warps stay full in both
// regimes, unlike one thread per block per triangle. Depth is combined with integer atomicMin on the
// order-preserving int mapping of raster_math.h, then each output pixel combines its supersamples (resolve_pixel).
#include "raster_cuda.h"

// Every launch goes through this macro, so the same text also runs on the host under the test shim
// (tests/cuda_on_cpu/cuda_runtime.h defines its own CUDA_LAUNCH); nvcc sees the usual triple chevrons.
#ifndef CUDA_LAUNCH
#define CUDA_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

namespace sphere_hand {
namespace {

constexpr int kThreads = 256;
constexpr int kSmallBox = 16;  // pixels a single thread samples on its own
constexpr unsigned kFullMask = 0xFFFFFFFFu;

__global__ void clear_kernel(int32_t* bits, int64_t count) {
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < count; k += (int64_t)gridDim.x * blockDim.x)
        bits[k] = kEmptyDepth;
}

// One thread per output pixel combines its s*s subsamples.
__global__ void resolve_kernel(RasterParams p, float* out, float background) {
    const int64_t pixels = (int64_t)p.height * p.width, count = pixels * p.batch;
    const int64_t fine_image = pixels * p.supersample * p.supersample;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < count; k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = k / pixels, pixel = k % pixels;
        out[k] = resolve_pixel(p.depth_bits + b * fine_image, p.width, p.supersample, (int)(pixel / p.width),
                               (int)(pixel % p.width), background);
    }
}

__device__ __forceinline__ void write_min(int32_t* pixel, float z) {
    const int32_t o = float_to_ordered(z);
    if (o < *pixel) atomicMin(pixel, o);  // the plain read skips most atomics once the buffer is filled
}

__device__ void sample_box(const Triangle& t, const RasterParams& p, int32_t* image, int i0, int j0, int box_w,
                           int count, int first, int stride) {
    const int64_t fine_w = (int64_t)p.width * p.supersample;
    for (int k = first; k < count; k += stride) {
        const int i = i0 + k / box_w, j = j0 + k % box_w;
        float z;
        if (sample_triangle(t, p.perspective != 0, i, j, &z)) write_min(image + i * fine_w + j, z);
    }
}

__global__ void raster_kernel(RasterParams p) {
    const int face = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const int fine_h = p.height * p.supersample, fine_w = p.width * p.supersample;
    for (int b = blockIdx.y; b < p.batch; b += gridDim.y) {
        int32_t* image = p.depth_bits + (int64_t)b * fine_h * fine_w;
        Triangle t = {};
        int i0 = 0, i1 = -1, j0 = 0, j1 = -1;
        if (face < p.num_faces && setup_triangle(p, b, face, &t)) triangle_bounds(t, fine_h, fine_w, &i0, &i1, &j0, &j1);
        const int box_w = j1 - j0 + 1, box_h = i1 - i0 + 1;
        const int count = (box_w > 0 && box_h > 0) ? box_w * box_h : 0;

        if (count <= kSmallBox) sample_box(t, p, image, i0, j0, box_w, count, 0, 1);

        // Every lane reaches the ballot: threads past the last face carry an empty box.
        unsigned large = __ballot_sync(kFullMask, count > kSmallBox);
        while (large) {
            const int src = __ffs(large) - 1;
            large &= large - 1;
            Triangle s;
            for (int k = 0; k < 3; ++k) {
                s.x[k] = __shfl_sync(kFullMask, t.x[k], src);
                s.y[k] = __shfl_sync(kFullMask, t.y[k], src);
                s.z[k] = __shfl_sync(kFullMask, t.z[k], src);
            }
            s.area = __shfl_sync(kFullMask, t.area, src);
            const int si0 = __shfl_sync(kFullMask, i0, src), sj0 = __shfl_sync(kFullMask, j0, src);
            const int sw = __shfl_sync(kFullMask, box_w, src), scount = __shfl_sync(kFullMask, count, src);
            sample_box(s, p, image, si0, sj0, sw, scount, lane, 32);
        }
    }
}

int blocks_for(int64_t count) {
    const int64_t blocks = (count + kThreads - 1) / kThreads;
    return (int)(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

}  // namespace

cudaError_t rasterize_cuda(const RasterParams& p, float background, float* out, cudaStream_t stream) {
    const int64_t count = (int64_t)p.batch * p.height * p.width;
    if (count == 0) return cudaSuccess;
    const int64_t subsamples = count * p.supersample * p.supersample;
    CUDA_LAUNCH(clear_kernel, blocks_for(subsamples), kThreads, stream, p.depth_bits, subsamples);
    if (p.num_faces > 0) {
        const dim3 grid((p.num_faces + kThreads - 1) / kThreads, p.batch < 65535 ? p.batch : 65535);
        CUDA_LAUNCH(raster_kernel, grid, kThreads, stream, p);
    }
    CUDA_LAUNCH(resolve_kernel, blocks_for(count), kThreads, stream, p, out, background);
    return cudaGetLastError();
}

}  // namespace sphere_hand
