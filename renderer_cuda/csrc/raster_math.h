// Per-triangle rasterization math shared by the CPU kernel (g++) and the CUDA kernel (nvcc).
//
// Everything here is a plain inline function on the host and __host__ __device__ under nvcc, so the two
// kernels evaluate the same expressions in the same order and agree bit for bit. Products and quotients go
// through mul_rn/div_rn so that no compiler fuses them into FMAs behind our back (nvcc does by default).
// The pure-torch reference (renderer_cuda/reference.py) evaluates the same expressions in the same order.
//
// Rules (documented in renderer_cuda/rasterize.py as well):
// - Pixel (i, j) samples the point (x = j + 0.5, y = i + 0.5).
// - Coverage is inclusive: a sample is covered when all three edge functions have the sign of the
//   triangle's area or are zero. Edge functions are antisymmetric bit for bit (see edge_function), so
//   two triangles sharing an edge agree on the side of every sample: no cracks, and samples exactly on
//   the shared edge are covered by both (the depth minimum makes that harmless).
// - Both windings are drawn; triangles of zero area or with non-finite coordinates are skipped.
// - Depth is interpolated linearly in screen space, or with 1/z linear (perspective mode, where
//   triangles with a vertex at z <= 0 are skipped).
// - Depth minimum via an order-preserving float -> int32 mapping, so CUDA can use integer atomicMin.
#pragma once

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define RASTER_HD __host__ __device__ __forceinline__
#else
#define RASTER_HD inline
#endif

namespace sphere_hand {

// Inputs and output of one rasterization: a batch of meshes sharing one face list.
struct RasterParams {
    const float* vertices;  // (batch, num_vertices, 3) x, y in pixels, z depth; contiguous
    const int32_t* faces;   // (num_faces, 3) vertex indices, checked to lie in [0, num_vertices)
    int32_t* depth_bits;    // (batch, height * s, width * s) ordered-int subsample buffer, s = supersample
    int batch;
    int num_vertices;
    int num_faces;
    int height;             // output size in pixels
    int width;
    int supersample;        // s >= 1 subsamples per pixel and axis; x, y are scaled by s
    int perspective;        // nonzero: 1/z is interpolated linearly
};

// ---- float <-> ordered int ---------------------------------------------------------------------------

RASTER_HD int32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_int(f);
#else
    int32_t i;
    memcpy(&i, &f, sizeof(i));
    return i;
#endif
}

RASTER_HD float bits_float(int32_t i) {
#ifdef __CUDA_ARCH__
    return __int_as_float(i);
#else
    float f;
    memcpy(&f, &i, sizeof(f));
    return f;
#endif
}

// Order-preserving map: a < b (finite floats) <=> float_to_ordered(a) < float_to_ordered(b) as int32.
// Non-negative floats keep their bit pattern; negative ones flip their 31 magnitude bits, which reverses
// their order while keeping them below every non-negative value. The map is its own inverse.
RASTER_HD int32_t float_to_ordered(float f) {
    const int32_t i = float_bits(f);
    return i >= 0 ? i : (i ^ 0x7FFFFFFF);
}

RASTER_HD float ordered_to_float(int32_t o) {
    return bits_float(o >= 0 ? o : (o ^ 0x7FFFFFFF));
}

// The cleared buffer value: +infinity, which no drawn sample writes (non-finite depths are skipped).
constexpr int32_t kEmptyDepth = 0x7F800000;


// ---- arithmetic without contraction -------------------------------------------------------------------

RASTER_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

RASTER_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

RASTER_HD bool is_finite(float f) {
    // Exponent bits all ones means inf or NaN; written out so host and device need no libm.
    return (float_bits(f) & 0x7F800000) != 0x7F800000;
}

// ---- triangles ----------------------------------------------------------------------------------------

// Edge function of the directed edge a -> b at p: twice the signed area of (a, b, p).
// Evaluated with the endpoints in a canonical (lexicographic) order and negated when they were swapped,
// so edge_function(a, b, p) == -edge_function(b, a, p) exactly: neighbours sharing an edge agree.
RASTER_HD float edge_function(float ax, float ay, float bx, float by, float px, float py) {
    const bool swap = (bx < ax) || (bx == ax && by < ay);
    const float x0 = swap ? bx : ax, y0 = swap ? by : ay;
    const float x1 = swap ? ax : bx, y1 = swap ? ay : by;
    const float e = mul_rn(x1 - x0, py - y0) - mul_rn(y1 - y0, px - x0);
    return swap ? -e : e;
}

// One triangle ready to sample. z holds depth, or 1/depth in perspective mode.
struct Triangle {
    float x[3];
    float y[3];
    float z[3];
    float area;  // edge_function(v0, v1, v2): sign gives the winding
};

// Loads triangle `face` of mesh `b`; false when it cannot cover any sample (degenerate, non-finite,
// or behind the camera in perspective mode).
RASTER_HD bool setup_triangle(const RasterParams& p, int b, int face, Triangle* t) {
    const float* verts = p.vertices + (int64_t)b * p.num_vertices * 3;
    bool ok = true;
    for (int k = 0; k < 3; ++k) {
        // Out-of-range indices are rejected in Python; skipping them here keeps the kernels memory-safe
        // for direct callers without a device sync.
        const int32_t index = p.faces[(int64_t)face * 3 + k];
        if (index < 0 || index >= p.num_vertices) return false;
        const float* v = verts + (int64_t)index * 3;
        t->x[k] = mul_rn(v[0], (float)p.supersample);
        t->y[k] = mul_rn(v[1], (float)p.supersample);
        t->z[k] = v[2];
        ok = ok && is_finite(v[0]) && is_finite(v[1]) && is_finite(v[2]);
        if (p.perspective) {
            ok = ok && v[2] > 0.0f;
            t->z[k] = div_rn(1.0f, v[2]);
        }
    }
    if (!ok) return false;
    t->area = edge_function(t->x[0], t->y[0], t->x[1], t->y[1], t->x[2], t->y[2]);
    return t->area != 0.0f;
}

// Inclusive pixel range [lo, hi] whose centres k + 0.5 lie within [vmin, vmax], clamped to [0, size).
// Empty when lo > hi. Clamping happens in float first so huge coordinates never overflow an int.
RASTER_HD void pixel_range(float vmin, float vmax, int size, int* lo, int* hi) {
    float l = vmin - 0.5f, h = vmax - 0.5f;
    l = l < -1.0f ? -1.0f : (l > (float)size ? (float)size : l);
    h = h < -1.0f ? -1.0f : (h > (float)size ? (float)size : h);
    int li = (int)l;
    if ((float)li < l) li += 1;  // ceil
    int hi_ = (int)h;
    if ((float)hi_ > h) hi_ -= 1;  // floor
    *lo = li < 0 ? 0 : li;
    *hi = hi_ > size - 1 ? size - 1 : hi_;
}

RASTER_HD float min3(float a, float b, float c) { return a < b ? (a < c ? a : c) : (b < c ? b : c); }
RASTER_HD float max3(float a, float b, float c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

// Pixel bounding box of a triangle within the image: rows [*i0, *i1], columns [*j0, *j1].
RASTER_HD void triangle_bounds(const Triangle& t, int height, int width, int* i0, int* i1, int* j0, int* j1) {
    pixel_range(min3(t.y[0], t.y[1], t.y[2]), max3(t.y[0], t.y[1], t.y[2]), height, i0, i1);
    pixel_range(min3(t.x[0], t.x[1], t.x[2]), max3(t.x[0], t.x[1], t.x[2]), width, j0, j1);
}

// Samples the triangle at pixel (i, j). Returns false when the centre is not covered; otherwise writes
// the interpolated depth to *depth.
RASTER_HD bool sample_triangle(const Triangle& t, bool perspective, int i, int j, float* depth) {
    const float px = (float)j + 0.5f, py = (float)i + 0.5f;
    const float w0 = edge_function(t.x[1], t.y[1], t.x[2], t.y[2], px, py);
    const float w1 = edge_function(t.x[2], t.y[2], t.x[0], t.y[0], px, py);
    const float w2 = edge_function(t.x[0], t.y[0], t.x[1], t.y[1], px, py);
    const bool covered = t.area > 0.0f ? (w0 >= 0.0f && w1 >= 0.0f && w2 >= 0.0f)
                                       : (w0 <= 0.0f && w1 <= 0.0f && w2 <= 0.0f);
    const float sum = w0 + w1 + w2;  // normalising by the sum keeps depth a convex combination
    if (!covered || sum == 0.0f) return false;
    const float weighted = mul_rn(w0, t.z[0]) + mul_rn(w1, t.z[1]) + mul_rn(w2, t.z[2]);
    const float z = perspective ? div_rn(sum, weighted) : div_rn(weighted, sum);
    if (!is_finite(z)) return false;
    *depth = z;
    return true;
}

// Output pixel (i, j) of image `fine` (the s*s subsamples of each pixel, row length width * s): the mean
// depth of its covered subsamples when at least half are covered, else the background. The subsamples sit
// symmetrically around the pixel centre, so on a covered plane the mean is the depth at the centre.
RASTER_HD float resolve_pixel(const int32_t* fine, int width, int supersample, int i, int j, float background) {
    const int fine_w = width * supersample;
    float total = 0.0f;
    int covered = 0;
    for (int a = 0; a < supersample; ++a) {
        const int32_t* row = fine + (int64_t)(i * supersample + a) * fine_w + (int64_t)j * supersample;
        for (int c = 0; c < supersample; ++c) {
            if (row[c] == kEmptyDepth) continue;
            total += ordered_to_float(row[c]);
            ++covered;
        }
    }
    if (2 * covered < supersample * supersample) return background;
    return div_rn(total, (float)covered);
}

}  // namespace sphere_hand
