// Python bindings. The same file builds both extensions: the CPU one, and with SPHERE_HAND_CUDA defined
// the CUDA one (two modules, so the CPU kernel stays available where the CUDA build fails).
// pybind11 with torch's Tensor caster; lighter to compile than torch/extension.h.
#include <torch/csrc/utils/pybind.h>

namespace sphere_hand {
#ifdef SPHERE_HAND_CUDA
at::Tensor rasterize_cuda_op(const at::Tensor& vertices, const at::Tensor& faces, int64_t height, int64_t width,
                             double background, bool perspective, int64_t supersample);
#else
at::Tensor rasterize_cpu_op(const at::Tensor& vertices, const at::Tensor& faces, int64_t height, int64_t width,
                            double background, bool perspective, int64_t supersample);
#endif
}  // namespace sphere_hand

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef SPHERE_HAND_CUDA
    m.def("rasterize", &sphere_hand::rasterize_cuda_op, "Depth rasterization on a CUDA device",
          pybind11::arg("vertices"), pybind11::arg("faces"), pybind11::arg("height"), pybind11::arg("width"),
          pybind11::arg("background"), pybind11::arg("perspective"), pybind11::arg("supersample"));
#else
    m.def("rasterize", &sphere_hand::rasterize_cpu_op, "Depth rasterization on the CPU", pybind11::arg("vertices"),
          pybind11::arg("faces"), pybind11::arg("height"), pybind11::arg("width"), pybind11::arg("background"),
          pybind11::arg("perspective"), pybind11::arg("supersample"));
#endif
}
