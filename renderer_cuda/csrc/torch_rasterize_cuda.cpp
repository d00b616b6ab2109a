// Torch op for the CUDA kernel: checks, allocation, the current stream. Compiled only where torch has
// CUDA. It includes only the c10/cuda stream and guard headers: ATen/cuda/CUDAContext.h would pull in the
// cuBLAS/cuSPARSE/cuSOLVER headers, which a compiler-only CUDA toolkit lacks.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "raster_cuda.h"
#include "torch_common.h"

namespace sphere_hand {

at::Tensor rasterize_cuda_op(const at::Tensor& vertices, const at::Tensor& faces, int64_t height, int64_t width,
                             double background, bool perspective, int64_t supersample) {
    check_raster_inputs(vertices, faces, height, width, supersample, at::kCUDA);
    const c10::cuda::CUDAGuard guard(vertices.device());
    const int64_t batch = vertices.size(0);
    at::Tensor out = at::empty({batch, height, width}, vertices.options());
    at::Tensor bits = at::empty({batch, height * supersample, width * supersample}, vertices.options().dtype(at::kInt));
    const RasterParams p = make_params(vertices, faces, height, width, supersample, perspective, bits.data_ptr<int32_t>());
    const cudaError_t err = rasterize_cuda(p, (float)background, out.data_ptr<float>(),
                                           c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "rasterize_cuda launch failed: ", cudaGetErrorString(err));
    return out;
}

}  // namespace sphere_hand
