// Calls the real CUDA launcher, rasterize_cuda (raster_cuda.cu, run on the host by simulator.cpp), on
// scenes written by tests/test_renderer_cuda_on_cpu.py and writes the depth images back.
//
//   harness SCENE OUT [SCENE OUT ...]
//
// SCENE: int32 magic, batch, num_vertices, num_faces, height, width, supersample, perspective; float32
// background; float32 vertices (batch, num_vertices, 3); int32 faces (num_faces, 3). OUT: float32 depth
// (batch, height, width). Exit status 2 for unreadable input, 3 when the launcher reports an error.
#include <stdio.h>

#include <vector>

#include "raster_cuda.h"

namespace {

constexpr int32_t kMagic = 0x31524853;  // "SHR1"

template <class T>
bool read_array(FILE* file, std::vector<T>* values, int64_t count) {
    values->resize((size_t)count);
    return fread(values->data(), sizeof(T), (size_t)count, file) == (size_t)count;
}

int render(const char* scene_path, const char* out_path) {
    FILE* scene = fopen(scene_path, "rb");
    if (!scene) {
        fprintf(stderr, "harness: cannot open %s\n", scene_path);
        return 2;
    }
    int32_t header[8];
    float background;
    std::vector<float> vertices;
    std::vector<int32_t> faces;
    bool ok = fread(header, sizeof header, 1, scene) == 1 && header[0] == kMagic &&
              fread(&background, sizeof background, 1, scene) == 1;
    sphere_hand::RasterParams p = {};
    if (ok) {
        p.batch = header[1];
        p.num_vertices = header[2];
        p.num_faces = header[3];
        p.height = header[4];
        p.width = header[5];
        p.supersample = header[6];
        p.perspective = header[7];
        ok = read_array(scene, &vertices, (int64_t)p.batch * p.num_vertices * 3) &&
             read_array(scene, &faces, (int64_t)p.num_faces * 3);
    }
    fclose(scene);
    if (!ok) {
        fprintf(stderr, "harness: %s is not a complete scene file\n", scene_path);
        return 2;
    }
    const int64_t pixels = (int64_t)p.batch * p.height * p.width;
    // "Device memory" starts as garbage, as cudaMalloc'd memory may: the kernel must clear what it reads.
    std::vector<int32_t> bits((size_t)(pixels * p.supersample * p.supersample), 0x5A5A5A5A);
    std::vector<float> out((size_t)pixels, -12345.0f);
    p.vertices = vertices.data();
    p.faces = faces.data();
    p.depth_bits = bits.data();
    const cudaError_t error = sphere_hand::rasterize_cuda(p, background, out.data(), nullptr);
    if (error != cudaSuccess) {
        fprintf(stderr, "harness: rasterize_cuda failed on %s: %s\n", scene_path, cudaGetErrorString(error));
        return 3;
    }
    FILE* file = fopen(out_path, "wb");
    const bool written = file && fwrite(out.data(), sizeof(float), out.size(), file) == out.size();
    if (!file || fclose(file) != 0 || !written) {
        fprintf(stderr, "harness: cannot write %s\n", out_path);
        return 2;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3 || argc % 2 != 1) {
        fprintf(stderr, "usage: harness SCENE OUT [SCENE OUT ...]\n");
        return 2;
    }
    for (int k = 1; k < argc; k += 2) {
        const int status = render(argv[k], argv[k + 1]);
        if (status != 0) return status;
    }
    return 0;
}
