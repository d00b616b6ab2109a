#include "raster_cpu.h"

namespace sphere_hand {

void rasterize_cpu_band(const RasterParams& p, int b, int row_begin, int row_end, float background, float* out) {
    const int64_t image = (int64_t)b * p.height * p.width;
    int32_t* bits = p.depth_bits + image;
    for (int64_t k = (int64_t)row_begin * p.width; k < (int64_t)row_end * p.width; ++k) bits[k] = kEmptyDepth;

    Triangle t;
    for (int face = 0; face < p.num_faces; ++face) {
        if (!setup_triangle(p, b, face, &t)) continue;
        int i0, i1, j0, j1;
        triangle_bounds(t, p.height, p.width, &i0, &i1, &j0, &j1);
        if (i0 < row_begin) i0 = row_begin;
        if (i1 > row_end - 1) i1 = row_end - 1;
        for (int i = i0; i <= i1; ++i) {
            int32_t* row = bits + (int64_t)i * p.width;
            for (int j = j0; j <= j1; ++j) {
                float z;
                if (!sample_triangle(t, p.perspective != 0, i, j, &z)) continue;
                const int32_t o = float_to_ordered(z);
                if (o < row[j]) row[j] = o;
            }
        }
    }
    for (int64_t k = (int64_t)row_begin * p.width; k < (int64_t)row_end * p.width; ++k)
        out[image + k] = resolve_depth(bits[k], background);
}

}  // namespace sphere_hand
