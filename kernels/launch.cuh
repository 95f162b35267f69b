// Host side of every kernel launcher: picks the template for the inputs' dtype and head dim, and turns a
// failed launch into an exception that names the kernel.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/attention_cuda.h"

namespace sctrain::kernels::cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls launch(TypeTag<T>{}, std::integral_constant<int, D>{}) for p's dtype and D in {64, 128}.
template <typename F>
void dispatch_launch(const AttnParams& p, const char* what, F&& launch) {
  if (p.B == 0 || p.N == 0 || p.H == 0) return;
  if (p.D != 64 && p.D != 128)
    throw std::invalid_argument("sigmoid attention kernel: head dim must be 64 or 128, got " + std::to_string(p.D));
  const bool bf = p.dtype == DType::BF16;
  using D64 = std::integral_constant<int, 64>;
  using D128 = std::integral_constant<int, 128>;
  if (p.D == 64)
    bf ? launch(TypeTag<__nv_bfloat16>{}, D64{}) : launch(TypeTag<__half>{}, D64{});
  else
    bf ? launch(TypeTag<__nv_bfloat16>{}, D128{}) : launch(TypeTag<__half>{}, D128{});
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("sigmoid attention ") + what + " launch: " + cudaGetErrorString(err));
}

}  // namespace sctrain::kernels::cuda
