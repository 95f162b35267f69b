// AdamW over many tensors per launch (see adamw.h). Memory-bound: per element it reads the weight, the
// gradient and both moments (16 bytes) and writes the weight, the moments and the bf16 copy (14 bytes).
// A block takes kChunk consecutive elements of one tensor; a launch covers up to kMaxTensors tensors,
// described in the kernel's parameters.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/adamw.h"

namespace sctrain::kernels::cuda {
namespace {

constexpr int kThreads = 256, kIters = 4, kChunk = kThreads * 4 * kIters;
constexpr int kMaxTensors = 36;  // keeps the parameters under 4 KB

struct Launch {
  AdamWTensor t[kMaxTensors];
  int block_end[kMaxTensors];  // blocks of tensors 0..i
  int n;
};

struct Scalars {
  float lr, beta1, beta2, eps;
  const float* grad_scale;
  const float* found_inf;
};

struct Elem {
  float p, g, m, v;
};

__device__ __forceinline__ void update(Elem& e, float inv_scale, float lr_wd, const Scalars& s, float step_size,
                                       float bc2_sqrt) {
  const float g = e.g * inv_scale;
  e.p = fmaf(-lr_wd, e.p, e.p);
  e.m = fmaf(s.beta1, e.m, (1.f - s.beta1) * g);
  e.v = fmaf(s.beta2, e.v, (1.f - s.beta2) * g * g);
  const float denom = sqrtf(e.v) / bc2_sqrt + s.eps;
  e.p -= step_size * e.m / denom;
}

__global__ void __launch_bounds__(kThreads) adamw_kernel(const __grid_constant__ Launch L, const Scalars s) {
  if (s.found_inf != nullptr && *s.found_inf != 0.f) return;
  int i = 0;
  while (L.block_end[i] <= static_cast<int>(blockIdx.x)) ++i;
  const AdamWTensor& t = L.t[i];
  const int64_t base = static_cast<int64_t>(blockIdx.x - (i > 0 ? L.block_end[i - 1] : 0)) * kChunk;

  // Bias corrections in double, once per block (as ATen computes them per tensor).
  __shared__ float coef[2];
  if (threadIdx.x == 0) {
    const double step = *t.step;
    coef[0] = static_cast<float>(static_cast<double>(s.lr) / (1.0 - pow(static_cast<double>(s.beta1), step)));
    coef[1] = static_cast<float>(sqrt(1.0 - pow(static_cast<double>(s.beta2), step)));
  }
  __syncthreads();
  const float step_size = coef[0], bc2_sqrt = coef[1];
  const float inv_scale = s.grad_scale != nullptr ? 1.f / *s.grad_scale : 1.f;
  const float lr_wd = s.lr * t.weight_decay;

  float* __restrict__ p = t.param;
  const float* __restrict__ g = t.grad;
  float* __restrict__ m = t.exp_avg;
  float* __restrict__ v = t.exp_avg_sq;
  __nv_bfloat16* __restrict__ c = static_cast<__nv_bfloat16*>(t.bf16_copy);
  const bool vec = ((reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g) | reinterpret_cast<uintptr_t>(m) |
                     reinterpret_cast<uintptr_t>(v)) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(c) & 7) == 0;

  if (vec && base + kChunk <= t.numel) {  // the whole chunk: all loads first, then the math and stores
    float4 rp[kIters], rg[kIters], rm[kIters], rv[kIters];
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t j = base + (k * kThreads + threadIdx.x) * 4;
      rp[k] = *reinterpret_cast<const float4*>(p + j);
      rg[k] = *reinterpret_cast<const float4*>(g + j);
      rm[k] = *reinterpret_cast<const float4*>(m + j);
      rv[k] = *reinterpret_cast<const float4*>(v + j);
    }
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int64_t j = base + (k * kThreads + threadIdx.x) * 4;
      Elem e[4] = {{rp[k].x, rg[k].x, rm[k].x, rv[k].x},
                   {rp[k].y, rg[k].y, rm[k].y, rv[k].y},
                   {rp[k].z, rg[k].z, rm[k].z, rv[k].z},
                   {rp[k].w, rg[k].w, rm[k].w, rv[k].w}};
#pragma unroll
      for (int q = 0; q < 4; ++q) update(e[q], inv_scale, lr_wd, s, step_size, bc2_sqrt);
      *reinterpret_cast<float4*>(p + j) = make_float4(e[0].p, e[1].p, e[2].p, e[3].p);
      *reinterpret_cast<float4*>(m + j) = make_float4(e[0].m, e[1].m, e[2].m, e[3].m);
      *reinterpret_cast<float4*>(v + j) = make_float4(e[0].v, e[1].v, e[2].v, e[3].v);
      if (c != nullptr) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(e[0].p, e[1].p), hi = __floats2bfloat162_rn(e[2].p, e[3].p);
        uint2 u;
        u.x = *reinterpret_cast<uint32_t*>(&lo);
        u.y = *reinterpret_cast<uint32_t*>(&hi);
        *reinterpret_cast<uint2*>(c + j) = u;
      }
    }
    return;
  }
  // A tensor's last chunk, or unaligned storage: one element at a time.
  const int64_t end = base + kChunk < t.numel ? base + kChunk : t.numel;
  for (int64_t j = base + threadIdx.x; j < end; j += kThreads) {
    Elem e{p[j], g[j], m[j], v[j]};
    update(e, inv_scale, lr_wd, s, step_size, bc2_sqrt);
    p[j] = e.p;
    m[j] = e.m;
    v[j] = e.v;
    if (c != nullptr) c[j] = __float2bfloat16_rn(e.p);
  }
}

}  // namespace

void adamw_multi_tensor(const std::vector<AdamWTensor>& tensors, const AdamWHyper& h, void* stream) {
  const Scalars s{static_cast<float>(h.lr), static_cast<float>(h.beta1), static_cast<float>(h.beta2),
                  static_cast<float>(h.eps), h.grad_scale, h.found_inf};
  Launch L{};
  int64_t blocks = 0;
  auto flush = [&] {
    if (L.n == 0) return;
    adamw_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(L, s);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) throw std::runtime_error(std::string("adamw: ") + cudaGetErrorString(err));
    L = Launch{};
    blocks = 0;
  };
  for (const auto& t : tensors) {
    if (t.numel <= 0) continue;
    const int64_t nb = (t.numel + kChunk - 1) / kChunk;
    if (L.n == kMaxTensors || blocks + nb > (int64_t{1} << 30)) flush();
    if (nb > (int64_t{1} << 30)) throw std::invalid_argument("adamw: tensor too large for one launch");
    blocks += nb;
    L.t[L.n] = t;
    L.block_end[L.n] = static_cast<int>(blocks);
    ++L.n;
  }
  flush();
}

}  // namespace sctrain::kernels::cuda
