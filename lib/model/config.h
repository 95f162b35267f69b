// Model hyperparameters (no LibTorch: the config and CLI code include this).
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace sctrain::model {

struct ModelConfig {
  int64_t vocab_size = 0;         // gene vocabulary incl. special tokens (set from the data)
  int64_t n_bins = 0;             // expression-bin embedding rows; 0: no bin embedding
  int64_t max_len = 256;          // longest sequence (CLS included)
  int64_t d_model = 128;
  int64_t n_layers = 2;
  int64_t n_heads = 4;
  int64_t d_ff = 512;
  std::string attention = "softmax";  // "softmax" (SDPA) or "sigmoid" (kernels::sigmoid_attention)
  std::optional<double> sigmoid_bias; // fixed bias; unset: -log(unpadded length)
  bool qk_norm = false;               // LayerNorm on q and k per head
  double layer_scale = 0.0;           // initial LayerScale gamma; 0: no LayerScale
  std::string norm = "pre";           // "pre" (pre-LayerNorm) or "post" (post-LayerNorm, BERT)
  std::string activation = "gelu";    // "gelu" (exact, erf) or "gelu_tanh" (tanh approximation)
  bool position_embedding = false;    // learned absolute position embedding
  double dropout = 0.0;               // residual and embedding dropout
  double init_std = 0.02;
  double ln_eps = 1e-5;

  int64_t head_dim() const { return d_model / n_heads; }
  // Throws std::invalid_argument naming the offending field.
  void validate() const;
};

// Parameters the model has with this config (matches Model::num_parameters()).
int64_t count_parameters(const ModelConfig& c);

// Model FLOPs of one training step (forward + backward) over sequences of these
// unpadded lengths: 6 * params * tokens + 12 * n_layers * d_model * sum(len^2).
double training_flops(const ModelConfig& c, int64_t params, const int32_t* lengths, int64_t n);

}  // namespace sctrain::model
