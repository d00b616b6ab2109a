// CUDA rasterization launcher: plain CUDA C++, no torch headers (the CPU torch wheel lacks CUDA headers,
// and keeping the kernel framework-free lets it compile and be tested with nvcc alone).
#pragma once

#include <cuda_runtime.h>

#include "raster_math.h"

namespace sphere_hand {

// Rasterizes all p.batch images into `out` (batch, height, width) float32 on the device, on `stream`.
// p.depth_bits must point to a device buffer of (batch, height * s, width * s) int32, s = p.supersample.
// Returns the first launch error, cudaSuccess otherwise.
cudaError_t rasterize_cuda(const RasterParams& p, float background, float* out, cudaStream_t stream);

}  // namespace sphere_hand
