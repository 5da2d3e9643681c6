// Pieces shared by the mma.sync (grouped_gemm.cu) and wgmma (grouped_gemm_sm90.cu) GEMM kernels:
// kernel parameters, tile resolution, cp.async and swizzle helpers, and the epilogue store.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/moe_kernels.h"
#include "kernels/weight_layout.h"

namespace moe::cuda {

constexpr int kBk = TileShape::kBk;

template <typename T>
struct Pair;
template <>
struct Pair<__nv_bfloat16> {
  using Type = __nv_bfloat162;
  static __device__ __forceinline__ Type Make(float a, float b) {
    return __floats2bfloat162_rn(a, b);
  }
};
template <>
struct Pair<__half> {
  using Type = __half2;
  static __device__ __forceinline__ Type Make(float a, float b) { return __floats2half2_rn(a, b); }
};

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// mbarrier and named-barrier helpers shared by the sm_90 kernels (shared::cta, 64-bit barriers
// in static shared memory); the waits stay with their kernels' headers (decode_common.cuh traps
// after ~2 s, wgmma_common.cuh polls bare).
__device__ __forceinline__ void MbarInit(uint64_t* bar, int count = 1) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(count)
               : "memory");
}
__device__ __forceinline__ void MbarArrive(uint64_t* bar) {
  asm volatile(
      "{\n"
      ".reg .b64 state;\n"
      "mbarrier.arrive.shared::cta.b64 state, [%0];\n"
      "}\n" ::"r"(SmemAddr(bar))
      : "memory");
}
// Orders this thread's generic-proxy accesses of shared memory with later async-proxy ones (TMA,
// bulk copies, wgmma operands).
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void NamedBarrierSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void NamedBarrierArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
#endif  // sm_90
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;  // 0: zero-fill, nothing is read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// D += A.B on the tensor cores, m16n8k16 (A: ldmatrix.x4 fragment, B: two registers).
template <typename T>
struct MmaOp;
template <>
struct MmaOp<__nv_bfloat16> {
  static __device__ __forceinline__ void Run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct MmaOp<__half> {
  static __device__ __forceinline__ void Run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Element offset of 16-byte chunk `chunk` (0..7) of tile row `row` (64 elements a row).
__device__ __forceinline__ int Swizzle(int row, int chunk) {
  return row * kBk + ((chunk ^ (row & 7)) << 3);
}

struct GemmParams {
  const void* a;
  int64_t lda;
  const int32_t* a_rows;
  const int2* tiles;
  const int32_t* n_tiles;
  const int32_t* group_offsets;
  const int32_t* m_dev;
  const void* const* b0_table;
  const void* const* b1_table;
  const int32_t* layer_dev;
  int64_t b_layer_stride;
  int64_t ldb;
  int n;
  int k;
  void* c;
  int64_t ldc;
  int out_f32;
  int splits;
  int64_t split_stride;
  const void* const* b0_tmaps;
  const void* const* b1_tmaps;
  int n_groups;
  int tma_multicast;
  const void* a_tmap;
  int a_cluster_cols;
  int pingpong;  // 0 off; 1 on; 2 on, in the kernel of 64-row stages (GemmArgs)
  const void* c_tmap;
  int pdl;           // launched with PDL (the cluster kernel; the others take it at launch)
  int pdl_prefetch;  // pdl and prefetch_weights
  const void* const* a_indirect;  // GemmArgs::a_indirect (GemmABase)
  int32_t* item_counter;          // GemmArgs::item_counter
  int32_t* h_ready;               // GemmArgs::h_ready
  int pair_extra_rows;            // GemmArgs::pair_extra_rows
  const void* a_x_tmap;           // GemmArgs::a_x_tmap
  int raster_units;               // GemmArgs::raster_units
  int b_packed;  // 0 row-major B; packed (GemmArgs::b_packed): 1 by bulk copies, 2 by tensor copies
};

// The kernel parameters of a validated GemmArgs (host side).
inline GemmParams MakeGemmParams(const GemmArgs& args) {
  return GemmParams{args.a,
                    args.lda,
                    args.a_rows,
                    args.tiles,
                    args.n_tiles,
                    args.group_offsets,
                    args.m_dev,
                    args.b0_table,
                    args.b1_table,
                    args.layer_dev,
                    args.b_layer_stride,
                    args.ldb,
                    args.n,
                    args.k,
                    args.c,
                    args.ldc,
                    args.out_f32 ? 1 : 0,
                    args.splits,
                    args.split_stride,
                    args.b0_tmaps,
                    args.b1_tmaps,
                    args.n_groups,
                    args.tma_multicast ? 1 : 0,
                    args.a_tmap,
                    args.a_cluster_cols,
                    args.pingpong ? (args.pingpong_short_stages ? 2 : 1) : 0,
                    args.c_tmap,
                    args.pdl ? 1 : 0,
                    args.pdl && args.prefetch_weights ? 1 : 0,
                    args.a_indirect,
                    args.item_counter,
                    args.h_ready,
                    args.pair_extra_rows ? 1 : 0,
                    args.a_x_tmap,
                    args.raster_units,
                    args.b_packed ? (args.b_packed_tensor ? 2 : 1) : 0};
}

// Element offset in a B matrix of 16-byte chunk (row, col..col + 7), col % 8 == 0, in the
// layout p.b_packed says; the same chunk of the next k-step of kBk lies BKStep(p) further.
__device__ __forceinline__ int64_t BChunkOffset(const GemmParams& p, int64_t row, int col) {
  return p.b_packed ? PackedOffset(row, col, p.k) : row * p.ldb + col;
}
__device__ __forceinline__ int BKStep(const GemmParams& p) {
  return p.b_packed ? kPackedTileElems : kBk;
}

// A's base pointer: *p.a_indirect when set (read on the device), else p.a.
template <typename T>
__device__ __forceinline__ const T* GemmABase(const GemmParams& p) {
  return static_cast<const T*>(p.a_indirect != nullptr ? *p.a_indirect : p.a);
}

// Copy descriptors of the A rows one thread gathers into a stage: its i-th 16-byte chunk is chunk
// (c & 7) of tile row c / 8, c = tid + i * THREADS; row r of the tile reads A row a_rows[r] (or r).
// K advances per stage: the copy of stage k0 reads src[i] + k0 into dst[i] when ok[i] and
// k0 + col[i] < K.
template <typename T, int CHUNKS, int THREADS>
__device__ __forceinline__ void PlanARowCopies(const GemmParams& p, const T* a_base, int tid,
                                               int row_begin, int row_end, const T* (&src)[CHUNKS],
                                               bool (&ok)[CHUNKS], int (&dst)[CHUNKS],
                                               int (&col)[CHUNKS]) {
#pragma unroll
  for (int i = 0; i < CHUNKS; ++i) {
    const int c = tid + i * THREADS;
    const int row = c >> 3, chunk = c & 7;
    const int r = row_begin + row;
    ok[i] = r < row_end;
    const int64_t src_row = ok[i] ? (p.a_rows ? p.a_rows[r] : r) : 0;
    src[i] = a_base + src_row * p.lda + chunk * 8;
    dst[i] = Swizzle(row, chunk);
    col[i] = chunk * 8;
  }
}

// Which rows row tile `t` owns: entry t of the tile list (grouped) or rows t * bm.. of the dense
// rows. Returns false when the tile has no work.
__device__ __forceinline__ bool ResolveTileAt(const GemmParams& p, int bm, int t, int& group,
                                              int& row_begin, int& row_end) {
  if (p.tiles != nullptr) {
    if (t >= *p.n_tiles) return false;
    const int2 tile = p.tiles[t];
    group = tile.x;
    row_begin = tile.y;
    row_end = min(p.group_offsets[group + 1], row_begin + bm);
    return true;
  }
  group = 0;
  row_begin = t * bm;
  const int m = *p.m_dev;
  if (row_begin >= m) return false;
  row_end = min(m, row_begin + bm);
  return true;
}
// The row tiles of the problem (grouped: *n_tiles; dense: ceil(*m_dev / bm)).
__device__ __forceinline__ int RowTiles(const GemmParams& p, int bm) {
  return p.tiles != nullptr ? *p.n_tiles : (*p.m_dev + bm - 1) / bm;
}
// The tile of this block: blockIdx.x (one block per tile).
__device__ __forceinline__ bool ResolveTile(const GemmParams& p, int bm, int& group, int& row_begin,
                                            int& row_end) {
  return ResolveTileAt(p, bm, static_cast<int>(blockIdx.x), group, row_begin, row_end);
}

// Stores the accumulator pair (v0, v1) of columns (col, col + 1) of row r: silu(gate) * up already
// applied by the caller for gated tiles; f32 partials per split, or T.
// `split`: the K split whose partials these are (f32 output only).
template <typename T>
__device__ __forceinline__ void StorePairAt(const GemmParams& p, bool out_f32, int split, int r,
                                            int col, float v0, float v1) {
  if (out_f32) {
    float* out = static_cast<float*>(p.c) + split * p.split_stride + r * p.ldc;
    if (col < p.n) out[col] = v0;
    if (col + 1 < p.n) out[col + 1] = v1;
  } else {
    T* out = static_cast<T*>(p.c) + r * p.ldc;
    if (col + 1 < p.n) {
      *reinterpret_cast<typename Pair<T>::Type*>(out + col) = Pair<T>::Make(v0, v1);
    } else if (col < p.n) {
      out[col] = static_cast<T>(v0);
    }
  }
}

// The split is blockIdx.z (one block per tile and split).
template <typename T>
__device__ __forceinline__ void StorePair(const GemmParams& p, bool out_f32, int r, int col,
                                          float v0, float v1) {
  StorePairAt<T>(p, out_f32, static_cast<int>(blockIdx.z), r, col, v0, v1);
}

// NOTES: __fdividef (one reciprocal and a multiply) instead of an IEEE division: 1.6-4% faster
// layers at 512-16384 tokens (H200, session 4), the gated epilogue being issue-bound. Every tile
// and path uses this one function, so they still round alike.
__device__ __forceinline__ float Silu(float g) { return __fdividef(g, 1.0f + __expf(-g)); }

// The Hopper (wgmma) kernels; defined in grouped_gemm_sm90.cu.
Status InitGemmKernelsSm90();
// resident_clusters: for kWgmmaWsMc (GemmArgs::resident_clusters).
Status LaunchGemmSm90(const GemmParams& p, GemmTile tile, bool gated, WType wtype, dim3 grid,
                      int resident_clusters, cudaStream_t stream);
// The kWgmmaWsMc kernel (grouped_gemm_sm90_cluster.cu): a grouped GEMM (tile list, group_offsets,
// at most kMaxClusterGemmGroups groups: moe_kernels.h) with TMA descriptor tables; max_items bounds
// its work items (the launch's row tiles x column blocks x splits).
Status InitGemmKernelsSm90Cluster();
Status LaunchGemmSm90Cluster(const GemmParams& p, bool gated, WType wtype, int64_t max_items,
                             int resident_clusters, cudaStream_t stream);

}  // namespace moe::cuda
