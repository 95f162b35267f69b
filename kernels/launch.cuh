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
// Returns launch's bool (false: nothing launched), or true for a launch that returns nothing.
template <typename F>
bool dispatch_launch(const AttnParams& p, const char* what, F&& launch) {
  if (p.B == 0 || p.N == 0 || p.H == 0) return true;
  if (p.D != 64 && p.D != 128)
    throw std::invalid_argument("sigmoid attention kernel: head dim must be 64 or 128, got " + std::to_string(p.D));
  const bool bf = p.dtype == DType::BF16;
  auto call = [&](auto t, auto d) {
    if constexpr (std::is_void_v<decltype(launch(t, d))>) {
      launch(t, d);
      return true;
    } else {
      return static_cast<bool>(launch(t, d));
    }
  };
  using D64 = std::integral_constant<int, 64>;
  using D128 = std::integral_constant<int, 128>;
  const bool launched = p.D == 64 ? (bf ? call(TypeTag<__nv_bfloat16>{}, D64{}) : call(TypeTag<__half>{}, D64{}))
                                  : (bf ? call(TypeTag<__nv_bfloat16>{}, D128{}) : call(TypeTag<__half>{}, D128{}));
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("sigmoid attention ") + what + " launch: " + cudaGetErrorString(err));
  return launched;
}

}  // namespace sctrain::kernels::cuda
