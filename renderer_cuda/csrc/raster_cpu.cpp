#include "raster_cpu.h"

namespace sphere_hand {

void rasterize_cpu_band(const RasterParams& p, int b, int row_begin, int row_end, float background, float* out) {
    const int s = p.supersample;
    const int fine_h = p.height * s, fine_w = p.width * s, fine_begin = row_begin * s, fine_end = row_end * s;
    int32_t* bits = p.depth_bits + (int64_t)b * fine_h * fine_w;
    for (int64_t k = (int64_t)fine_begin * fine_w; k < (int64_t)fine_end * fine_w; ++k) bits[k] = kEmptyDepth;

    Triangle t;
    for (int face = 0; face < p.num_faces; ++face) {
        if (!setup_triangle(p, b, face, &t)) continue;
        int i0, i1, j0, j1;
        triangle_bounds(t, fine_h, fine_w, &i0, &i1, &j0, &j1);
        if (i0 < fine_begin) i0 = fine_begin;
        if (i1 > fine_end - 1) i1 = fine_end - 1;
        for (int i = i0; i <= i1; ++i) {
            int32_t* row = bits + (int64_t)i * fine_w;
            for (int j = j0; j <= j1; ++j) {
                float z;
                if (!sample_triangle(t, p.perspective != 0, i, j, &z)) continue;
                const int32_t o = float_to_ordered(z);
                if (o < row[j]) row[j] = o;
            }
        }
    }
    float* image = out + (int64_t)b * p.height * p.width;
    for (int i = row_begin; i < row_end; ++i)
        for (int j = 0; j < p.width; ++j)
            image[(int64_t)i * p.width + j] = resolve_pixel(bits, p.width, s, i, j, background);
}

}  // namespace sphere_hand
