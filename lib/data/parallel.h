// fn(0), ..., fn(n_threads - 1) on n_threads threads (the caller's among them); the first
// exception thrown is rethrown once all have finished.
#pragma once
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sctrain::data {

template <typename Fn>
void run_parallel(int n_threads, Fn&& fn) {
  std::exception_ptr error;
  std::mutex mu;
  auto guarded = [&](int p) {
    try {
      fn(p);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (int p = 1; p < n_threads; ++p) pool.emplace_back(guarded, p);
  guarded(0);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace sctrain::data
