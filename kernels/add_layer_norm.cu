// Fused residual add + LayerNorm (see add_layer_norm.h). One warp per row; each lane holds
// V chunks of 8 consecutive features (columns (lane + 32 j) * 8 .. + 7) in registers, so a row
// is read once and the statistics are exact two-pass sums over registers.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/add_layer_norm.h"
#include "kernels/rows_common.cuh"

namespace sctrain::kernels::cuda {
namespace {

constexpr int kWarps = 4;  // rows per CTA (forward), warps per CTA (backward)
constexpr int kThreads = kWarps * 32;
constexpr int kMaxV = 4;   // d <= 32 lanes x 8 x 4 = 1024
struct NoH {};

__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

template <int V, typename HT, typename YT>
__global__ void __launch_bounds__(kThreads) add_ln_forward(const float* __restrict__ r, const HT* __restrict__ h,
                                                           const float* __restrict__ hb,
                                                           const float* __restrict__ gamma,
                                                           const float* __restrict__ beta, float* __restrict__ x_out,
                                                           YT* __restrict__ y, float* __restrict__ mean_out,
                                                           float* __restrict__ rstd_out, int64_t rows, int d,
                                                           float eps) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= rows) return;
  const int64_t off = row * d;
  float v[V][8];
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int c = (lane + 32 * j) * 8;
    if (c < d) {
      load8(r + off + c, v[j]);
      if constexpr (!std::is_same_v<HT, NoH>) {
        float t[8];
        load8(h + off + c, t);
#pragma unroll
        for (int k = 0; k < 8; ++k) v[j][k] += t[k];
        if (hb != nullptr) {  // uniform
          load8(hb + c, t);
#pragma unroll
          for (int k = 0; k < 8; ++k) v[j][k] += t[k];
        }
      }
#pragma unroll
      for (int k = 0; k < 8; ++k) s += v[j][k];
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) v[j][k] = 0.f;
    }
  }
  const float inv_d = 1.f / static_cast<float>(d);
  const float mu = warp_sum(s) * inv_d;
  float q = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j)
    if ((lane + 32 * j) * 8 < d) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float t = v[j][k] - mu;
        q += t * t;
      }
    }
  const float rs = rsqrtf(warp_sum(q) * inv_d + eps);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int c = (lane + 32 * j) * 8;
    if (c < d) {
      if constexpr (!std::is_same_v<HT, NoH>) store8(x_out + off + c, v[j]);
      float g[8], b[8], o[8];
      load8(gamma + c, g);
      load8(beta + c, b);
#pragma unroll
      for (int k = 0; k < 8; ++k) o[k] = (v[j][k] - mu) * rs * g[k] + b[k];
      store8(y + off + c, o);
    }
  }
  if (lane == 0) {
    mean_out[row] = mu;
    rstd_out[row] = rs;
  }
}

// Rows in a grid-stride loop; each warp accumulates its rows' dgamma/dbeta terms (A = 3: also dx,
// for the branch bias's gradient) in shared memory (registers would hold A x 8 V more floats per
// lane and halve the resident warps), and the CTA writes one partial row of each. Shared layout per
// warp and chunk j of 256 columns: lane's columns 8 lane + 0..3 at 4 lane, 8 lane + 4..7 at 128 +
// 4 lane (float4s of consecutive lanes are consecutive: no bank conflicts).
__device__ __forceinline__ int acc_index(int c) {
  const int j = c >> 8, rem = c & 255, lane = rem >> 3, k = rem & 7;
  return j * 256 + (k >> 2) * 128 + lane * 4 + (k & 3);
}

template <int V, typename YT, int A>
__global__ void __launch_bounds__(kThreads) add_ln_backward(const YT* __restrict__ dy, const float* __restrict__ x,
                                                            const float* __restrict__ mean,
                                                            const float* __restrict__ rstd,
                                                            const float* __restrict__ gamma,
                                                            const float* __restrict__ dx_next, float* __restrict__ dx,
                                                            __nv_bfloat16* __restrict__ dx_bf16,
                                                            float* __restrict__ partial, int64_t rows, int d) {
  static_assert(A == 2 || A == 3, "dgamma, dbeta and optionally dx's column sums");
  __shared__ __align__(16) float acc[kWarps][A][V * 256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float inv_d = 1.f / static_cast<float>(d);
  float* ag = acc[warp][0];
  float* ab = acc[warp][1];
#pragma unroll
  for (int a = 0; a < A; ++a)
#pragma unroll
    for (int j = 0; j < V; ++j) {
      reinterpret_cast<float4*>(acc[warp][a] + j * 256)[lane] = make_float4(0.f, 0.f, 0.f, 0.f);
      reinterpret_cast<float4*>(acc[warp][a] + j * 256 + 128)[lane] = make_float4(0.f, 0.f, 0.f, 0.f);
    }

  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t off = row * d;
    const float mu = mean[row], rs = rstd[row];
    float xh[V][8], g[V][8];
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int c = (lane + 32 * j) * 8;
      if (c < d) {
        load8(x + off + c, xh[j]);
        load8(dy + off + c, g[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int c = (lane + 32 * j) * 8;
      if (c < d) {
        float gm[8];
        load8(gamma + c, gm);
        float4* pg = reinterpret_cast<float4*>(ag + j * 256);
        float4* pb = reinterpret_cast<float4*>(ab + j * 256);
        float4 g0 = pg[lane], g1 = pg[32 + lane], b0 = pb[lane], b1 = pb[32 + lane];
#pragma unroll
        for (int k = 0; k < 8; ++k) xh[j][k] = (xh[j][k] - mu) * rs;
        g0.x += g[j][0] * xh[j][0]; g0.y += g[j][1] * xh[j][1]; g0.z += g[j][2] * xh[j][2]; g0.w += g[j][3] * xh[j][3];
        g1.x += g[j][4] * xh[j][4]; g1.y += g[j][5] * xh[j][5]; g1.z += g[j][6] * xh[j][6]; g1.w += g[j][7] * xh[j][7];
        b0.x += g[j][0]; b0.y += g[j][1]; b0.z += g[j][2]; b0.w += g[j][3];
        b1.x += g[j][4]; b1.y += g[j][5]; b1.z += g[j][6]; b1.w += g[j][7];
        pg[lane] = g0; pg[32 + lane] = g1; pb[lane] = b0; pb[32 + lane] = b1;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          g[j][k] *= gm[k];
          s1 += g[j][k];
          s2 += g[j][k] * xh[j][k];
        }
      }
    }
    s1 = warp_sum(s1) * inv_d;
    s2 = warp_sum(s2) * inv_d;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int c = (lane + 32 * j) * 8;
      if (c < d) {
        float o[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) o[k] = rs * (g[j][k] - s1 - xh[j][k] * s2);
        if (dx_next != nullptr) {
          float t[8];
          load8(dx_next + off + c, t);
#pragma unroll
          for (int k = 0; k < 8; ++k) o[k] += t[k];
        }
        store8(dx + off + c, o);
        if (dx_bf16 != nullptr) store8(dx_bf16 + off + c, o);
        if constexpr (A == 3) {
          float4* ph = reinterpret_cast<float4*>(acc[warp][2] + j * 256);
          float4 h0 = ph[lane], h1 = ph[32 + lane];
          h0.x += o[0]; h0.y += o[1]; h0.z += o[2]; h0.w += o[3];
          h1.x += o[4]; h1.y += o[5]; h1.z += o[6]; h1.w += o[7];
          ph[lane] = h0; ph[32 + lane] = h1;
        }
      }
    }
  }

  // The CTA's partial column sums over its warps.
  __syncthreads();
  for (int c = threadIdx.x; c < d; c += kThreads) {
    const int i = acc_index(c);
#pragma unroll
    for (int a = 0; a < A; ++a) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += acc[w][a][i];
      partial[(static_cast<int64_t>(a) * gridDim.x + blockIdx.x) * d + c] = s;
    }
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("add_layer_norm ") + what + ": " + cudaGetErrorString(err));
}

int vectors_per_lane(int d) {
  if (d <= 0 || d % 8 != 0 || d > add_layer_norm_max_dim())
    throw std::invalid_argument("add_layer_norm: d must be a positive multiple of 8 up to " +
                                std::to_string(add_layer_norm_max_dim()) + ", got " + std::to_string(d));
  return (d / 8 + 31) / 32;
}

template <typename F>
void with_v(int V, F&& f) {
  switch (V) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

template <typename F>
void with_type(NormType t, F&& f) {
  if (t == NormType::BF16)
    f(__nv_bfloat16{});
  else
    f(float{});
}

template <typename F>
void with_accumulators(bool dh_bias, F&& f) {
  if (dh_bias)
    f(std::integral_constant<int, 3>{});
  else
    f(std::integral_constant<int, 2>{});
}

template <int V, typename YT, int A>
int backward_blocks_per_sm() {
  static int cached = 0;  // per instantiation; the same on every device of one kind
  if (cached == 0) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, add_ln_backward<V, YT, A>, kThreads, 0) != cudaSuccess || n < 1)
      n = 1;
    cached = n;
  }
  return cached;
}

}  // namespace

int add_layer_norm_max_dim() { return 32 * 8 * kMaxV; }

int add_layer_norm_backward_grid(int64_t rows, int d, NormType dy_type, bool dh_bias) {
  const int sms = sm_count();
  int per_sm = 1;
  with_v(vectors_per_lane(d), [&](auto v) {
    with_type(dy_type, [&](auto y) {
      with_accumulators(dh_bias, [&](auto a) {
        per_sm = backward_blocks_per_sm<decltype(v)::value, decltype(y), decltype(a)::value>();
      });
    });
  });
  const int64_t need = (rows + kWarps - 1) / kWarps;
  const int64_t grid = std::min<int64_t>(need, static_cast<int64_t>(std::max(sms, 1)) * per_sm);
  return static_cast<int>(std::max<int64_t>(grid, 1));
}

void add_layer_norm_forward(const AddLayerNormForward& p, void* stream) {
  if (p.rows == 0) return;
  if (p.h_bias != nullptr && p.h_type == NormType::None)
    throw std::invalid_argument("add_layer_norm: a branch bias needs the branch output h");
  const int V = vectors_per_lane(p.d);
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = static_cast<unsigned>((p.rows + kWarps - 1) / kWarps);
  with_v(V, [&](auto v) {
    constexpr int kV = decltype(v)::value;
    with_type(p.y_type, [&](auto y) {
      using YT = decltype(y);
      auto* yp = static_cast<YT*>(p.y);
      if (p.h_type == NormType::None)
        add_ln_forward<kV, NoH, YT><<<grid, kThreads, 0, s>>>(p.r, nullptr, nullptr, p.gamma, p.beta, nullptr, yp,
                                                              p.mean, p.rstd, p.rows, p.d, p.eps);
      else
        with_type(p.h_type, [&](auto h) {
          using HT = decltype(h);
          add_ln_forward<kV, HT, YT><<<grid, kThreads, 0, s>>>(p.r, static_cast<const HT*>(p.h), p.h_bias, p.gamma,
                                                               p.beta, p.x, yp, p.mean, p.rstd, p.rows, p.d, p.eps);
        });
    });
  });
  check_launch("forward");
}

void add_layer_norm_backward(const AddLayerNormBackward& p, void* stream) {
  if (p.rows == 0) return;
  const int V = vectors_per_lane(p.d);
  const auto s = static_cast<cudaStream_t>(stream);
  const bool dh_bias = p.dh_bias != nullptr;
  const int grid = add_layer_norm_backward_grid(p.rows, p.d, p.dy_type, dh_bias);
  with_v(V, [&](auto v) {
    constexpr int kV = decltype(v)::value;
    with_type(p.dy_type, [&](auto y) {
      using YT = decltype(y);
      with_accumulators(dh_bias, [&](auto a) {
        add_ln_backward<kV, YT, decltype(a)::value><<<grid, kThreads, 0, s>>>(
            static_cast<const YT*>(p.dy), p.x, p.mean, p.rstd, p.gamma, p.dx_next, p.dx,
            static_cast<__nv_bfloat16*>(p.dx_bf16), p.partial, p.rows, p.d);
      });
    });
  });
  check_launch("backward");
  if (p.dgamma != nullptr || p.dbeta != nullptr || dh_bias) {
    const unsigned outputs = dh_bias ? 3 : 2;
    column_sums<<<dim3((p.d + 31) / 32, outputs), dim3(32, 8), 0, s>>>(p.partial, grid, p.d,
                                                                       ColumnSumOutputs{{p.dgamma, p.dbeta, p.dh_bias}});
    check_launch("column sums");
  }
}

}  // namespace sctrain::kernels::cuda
