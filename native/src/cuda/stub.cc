// The CUDA entry points of a build without nvcc: cuda_info() says CUDA was not compiled in and
// make_cuda_backend() refuses with that reason. Compiled instead of the .cu files (see binding.gyp).
#include "../backend.h"

namespace lx {

const CudaInfo& cuda_info() {
  static const CudaInfo info = [] {
    CudaInfo i;
    i.error = "the addon was built without CUDA (nvcc was not found at build time; rebuild with nvcc on PATH or CUDA_HOME set)";
    return i;
  }();
  return info;
}

Status make_cuda_backend(int, std::unique_ptr<Backend>*) {
  return Status::Invalid("device \"cuda\" is not available: " + cuda_info().error + "; use device \"cpu\"");
}

}  // namespace lx
