// CPU rasterization kernel: plain C++, no torch. The torch binding (torch_rasterize.cpp) runs the work
// items in parallel; each work item owns a band of rows of one image, so it needs no atomics.
#pragma once

#include "raster_math.h"

namespace sphere_hand {

// Clears and rasterizes output rows [row_begin, row_end) of image `b` (their subsample rows) into
// p.depth_bits, then resolves those rows to float depth in `out` (batch, height, width).
void rasterize_cpu_band(const RasterParams& p, int b, int row_begin, int row_end, float background, float* out);

}  // namespace sphere_hand
