// Torch op for the CPU kernel: checks, allocation and the parallel split into (image, row band) items.
#include <ATen/Parallel.h>

#include "raster_cpu.h"
#include "torch_common.h"

namespace sphere_hand {

at::Tensor rasterize_cpu_op(const at::Tensor& vertices, const at::Tensor& faces, int64_t height, int64_t width,
                            double background, bool perspective, int64_t supersample) {
    check_raster_inputs(vertices, faces, height, width, supersample, at::kCPU);
    const int64_t batch = vertices.size(0);
    at::Tensor out = at::empty({batch, height, width}, vertices.options());
    at::Tensor bits = at::empty({batch, height * supersample, width * supersample}, vertices.options().dtype(at::kInt));
    if (batch == 0) return out;
    const RasterParams p = make_params(vertices, faces, height, width, supersample, perspective, bits.data_ptr<int32_t>());

    // Enough items to keep every thread busy even for one image; each item rescans the face list, so
    // bands are only split as far as the thread count asks for.
    const int64_t threads = at::get_num_threads();
    const int64_t wanted = std::min<int64_t>(height, std::max<int64_t>(1, (4 * threads + batch - 1) / batch));
    const int64_t rows = (height + wanted - 1) / wanted;
    const int64_t bands = (height + rows - 1) / rows;
    float* out_ptr = out.data_ptr<float>();
    const float bg = (float)background;
    at::parallel_for(0, batch * bands, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
            const int64_t b = item / bands, band = item % bands;
            const int64_t r0 = band * rows, r1 = std::min(height, r0 + rows);
            rasterize_cpu_band(p, (int)b, (int)r0, (int)r1, bg, out_ptr);
        }
    });
    return out;
}

}  // namespace sphere_hand
