#include "engine/cpu/openblas_loader.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

namespace moe::cpu {

StatusOr<const OpenBlas*> LoadOpenBlas() {
  static std::once_flag once;
  static OpenBlas table;
  static std::string error;
  std::call_once(once, [] {
    void* lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = dlerror();
      error = why != nullptr ? why : "dlopen failed";
      return;
    }
    table.sgemm = reinterpret_cast<decltype(table.sgemm)>(dlsym(lib, "cblas_sgemm"));
    table.set_num_threads =
        reinterpret_cast<decltype(table.set_num_threads)>(dlsym(lib, "openblas_set_num_threads"));
    if (table.sgemm == nullptr || table.set_num_threads == nullptr) {
      error = "libopenblas.so.0 lacks cblas_sgemm or openblas_set_num_threads";
      table = OpenBlas{};
    }
  });
  if (table.sgemm == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("CPU engine gemm backend 'openblas' needs libopenblas.so.0: ", error));
  }
  return &table;
}

}  // namespace moe::cpu
