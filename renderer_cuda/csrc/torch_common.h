// Argument checks shared by the torch bindings. TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python
// as ValueError / TypeError; every message names the argument at fault.
#pragma once

// Only the ATen headers these ops need: torch/extension.h costs a JIT build tens of seconds per file.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "raster_math.h"

namespace sphere_hand {

inline void check_raster_inputs(const at::Tensor& vertices, const at::Tensor& faces, int64_t height, int64_t width,
                                int64_t supersample, at::DeviceType device) {
    const char* device_name = device == at::kCUDA ? "a CUDA device" : "the CPU";
    TORCH_CHECK_VALUE(vertices.device().type() == device, "vertices must be on ", device_name, ", got ",
                      vertices.device());
    TORCH_CHECK_VALUE(faces.device() == vertices.device(), "faces must be on the device of vertices (",
                      vertices.device(), "), got ", faces.device());
    TORCH_CHECK_TYPE(vertices.scalar_type() == at::kFloat, "vertices must be float32, got ", vertices.scalar_type());
    TORCH_CHECK_TYPE(faces.scalar_type() == at::kInt, "faces must be int32, got ", faces.scalar_type());
    TORCH_CHECK_VALUE(vertices.dim() == 3 && vertices.size(2) == 3, "vertices must have shape (B, V, 3), got ",
                      vertices.sizes());
    TORCH_CHECK_VALUE(faces.dim() == 2 && faces.size(1) == 3, "faces must have shape (F, 3), got ", faces.sizes());
    TORCH_CHECK_VALUE(vertices.is_contiguous(), "vertices must be contiguous");
    TORCH_CHECK_VALUE(faces.is_contiguous(), "faces must be contiguous");
    TORCH_CHECK_VALUE(supersample >= 1, "supersample must be at least 1, got ", supersample);
    // At most 2^15 subsamples per axis keeps a triangle box's pixel count within int32 in the kernels.
    TORCH_CHECK_VALUE(height > 0 && width > 0 && height * supersample <= (1 << 15) && width * supersample <= (1 << 15),
                      "height and width times supersample must lie in [1, 32768], got ", height, " x ", width,
                      " at supersample ", supersample);
    TORCH_CHECK_VALUE(vertices.size(1) < INT32_MAX && faces.size(0) < INT32_MAX && vertices.size(0) < INT32_MAX,
                      "vertices/faces are too large for 32-bit indexing: ", vertices.sizes(), ", ", faces.sizes());
}

inline RasterParams make_params(const at::Tensor& vertices, const at::Tensor& faces, int64_t height, int64_t width,
                                int64_t supersample, bool perspective, int32_t* depth_bits) {
    RasterParams p;
    p.vertices = vertices.data_ptr<float>();
    p.faces = faces.data_ptr<int32_t>();
    p.depth_bits = depth_bits;
    p.batch = (int)vertices.size(0);
    p.num_vertices = (int)vertices.size(1);
    p.num_faces = (int)faces.size(0);
    p.height = (int)height;
    p.width = (int)width;
    p.supersample = (int)supersample;
    p.perspective = perspective ? 1 : 0;
    return p;
}

}  // namespace sphere_hand
