// Build facts baked in by src/metrics/CMakeLists.txt: the version and CUDA release at configure
// time, the git revision at build time (git_revision.h, generated).
#include "git_revision.h"
#include "moe/metrics/metrics.h"

#ifndef MOE_BUILD_VERSION
#error "MOE_BUILD_VERSION must be defined by CMake"
#endif
#ifndef MOE_GIT_REVISION
#error "MOE_GIT_REVISION must be defined by CMake"
#endif
#ifndef MOE_BUILD_CUDA
#error "MOE_BUILD_CUDA must be defined by CMake"
#endif

namespace moe::metrics {

BuildInfo DefaultBuildInfo() {
  return BuildInfo{.version = MOE_BUILD_VERSION,
                   .git_revision = MOE_GIT_REVISION,
                   .cuda = MOE_BUILD_CUDA,
                   .engine = "cpu"};
}

}  // namespace moe::metrics
