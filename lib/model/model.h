// The transformer encoder for masked gene modelling.
//
//   tokens [B, N] (CLS first, PAD past length) -> gene embedding (+ bin, + position)
//   -> LayerNorm -> n_layers x Block -> final LayerNorm (pre-LN) -> hidden [B, N, d]
//   hidden at masked positions -> dense, GELU, LayerNorm -> tied gene embedding -> logits [M, V]
//   (GELU exact or its tanh approximation: ModelConfig::activation)
//   hidden[:, 0] (CLS) is the cell embedding.
//
// Attention is softmax (at::scaled_dot_product_attention: flash/cuDNN/mem-efficient on GPU)
// or sigmoid (sctrain::kernels::sigmoid_attention). Include only from .cpp files.
#pragma once
#include <torch/nn.h>

#include <string>
#include <vector>

#include "model/config.h"

namespace sctrain::data { struct Batch; }

namespace sctrain::model {

// A Batch as tensors on one device. On CUDA the host tensors are pinned and copied
// asynchronously (no stream synchronization), so a caller can queue the next step's inputs
// while the GPU still runs the last one.
struct Inputs {
  torch::Tensor tokens;   // [B, N] int64
  torch::Tensor bins;     // [B, N] int64, or undefined when the batch has no bins
  torch::Tensor lengths;  // [B] int32, unpadded lengths (CLS included)
  torch::Tensor labels;   // [B, N] int64, data::kIgnoreLabel where no loss
  torch::Tensor masked_positions;  // [M] int64 flat indices b*N+i of masked tokens (from the host)
  torch::Tensor masked_targets;    // [M] int64 their labels
  int64_t max_length = 0;  // max(lengths), known on the host
  int64_t min_length = 0;  // min(lengths): < N means the batch is padded
};
Inputs to_inputs(const data::Batch& b, const torch::Device& device);

// y = x W^T + b for 2-D x [M, K], whose backward takes the bias gradient as a GEMM
// (ones[1, M] dy) rather than a column reduction, and the weight gradient as dy^T x
// (contiguous, no transposed copy). Under autocast on x's device, casts x, W, b first
// (W and b through the autocast weight cache). Used for CUDA inputs.
// On CUDA under autocast the float32 weight and bias are cast inside, and their gradients
// come out of the GEMMs in float32 (at::mm's out_dtype) rather than as bf16 gradients that a
// cast kernel turns into float32 ones: off with set_direct_weight_grads(false) (A/B, tests).
// add_bias false: b is neither added nor given a gradient (the caller adds it elsewhere).
torch::Tensor linear_gemm_grads(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                                bool add_bias = true);
void set_direct_weight_grads(bool on);

// w cast to t for a GEMM. A float32 CUDA leaf cast to bf16 (the linear layers' weights under autocast)
// is cast once and kept, and recast when w changes (its version counter, as in-place updates such as
// the optimizer's bump it, or its storage): refresh_weight_casts() recasts every stale kept copy in
// one multi-tensor copy (ModelImpl::forward calls it first), instead of one cast kernel per weight and
// bias in every forward. set_cached_weight_casts(false): a cast at each use (A/B, tests).
torch::Tensor cast_weight(const torch::Tensor& w, at::ScalarType t);
void refresh_weight_casts();
void set_cached_weight_casts(bool on);
// For an optimizer that writes each updated weight's bf16 cast itself: w's kept copy if it is current
// (undefined otherwise), and, once the update wrote it and bumped w's version, weight_cast_written(w)
// so that the next refresh_weight_casts() leaves it alone.
torch::Tensor kept_weight_cast(const torch::Tensor& w);
void weight_cast_written(const torch::Tensor& w);

// l(x) for x [..., in]: 2-D inputs for the GEMM (addmm adds the bias in its epilogue; a 3-D input
// would take matmul + a broadcast add), through linear_gemm_grads on CUDA. add_bias false: l's bias
// is left to the caller.
torch::Tensor linear_2d(torch::nn::Linear& l, const torch::Tensor& x, bool add_bias = true);
// gelu(l(x)), exact GELU (gelu_tanh: the tanh approximation, torch::gelu(linear_2d(l, x), "tanh")).
// Exact, under CUDA bf16 autocast (float32 weights, out_features % 8 == 0): one autograd node, the
// GEMM, then our GELU kernel; its backward's kernel writes GELU's input gradient and the bias gradient
// in one pass (kernels/gelu.cu). Elsewhere, or with set_fused_gelu(false) (A/B, tests),
// torch::gelu(linear_2d(l, x)).
torch::Tensor linear_gelu(torch::nn::Linear& l, const torch::Tensor& x, bool gelu_tanh = false);
void set_fused_gelu(bool on);

// The feed-forward fc2(gelu(fc1(x))). Exact GELU: linear_2d(fc2, linear_gelu(fc1, x)). gelu_tanh under
// CUDA bf16 autocast (float32 weights): one autograd node whose GELU and GELU gradient run in the
// epilogues of cuBLASLt's GEMMs (kernels/gemm_lt.h), with no pass of their own; elsewhere the ATen ops.
// add_b2 false: fc2's bias is left to the caller.
torch::Tensor feed_forward(torch::nn::Linear& fc1, torch::nn::Linear& fc2, const torch::Tensor& x, bool gelu_tanh,
                           bool add_b2 = true);
// The feed-forward's tanh GELU in cuBLASLt's epilogues: on by default; off for A/B measurements and
// tests, then the same node runs ATen's ops. Process-wide.
void set_lt_epilogues(bool on);

// LayerNorm whose output feeds a GEMM. Under CUDA bf16 autocast it runs in bf16: the input
// is cast to bf16 and the norm's weight and bias go through the autocast weight cache (as
// linear layers' weights do), so it reads and writes half the bytes of autocast's float32
// LayerNorm and the GEMM needs no cast of its output; statistics are still accumulated in
// float32. (LibTorch 2.11's CUDA LayerNorm has no bf16-input/float32-weight variant.)
// Otherwise (CPU, float32, no autocast, or set_bf16_layer_norm(false)) it is ln(x).
torch::Tensor layer_norm_for_gemm(torch::nn::LayerNorm& ln, const torch::Tensor& x);
// The bf16 path of layer_norm_for_gemm: on by default; off gives autocast's float32 norm
// (for A/B measurements and tests). Process-wide.
void set_bf16_layer_norm(bool on);
bool bf16_layer_norm();
// Whether layer_norm_for_gemm takes its bf16 path for this input (CUDA, bf16 autocast, on).
bool bf16_norm_path(const torch::Tensor& x);

// A float32 residual stream x and its bf16 copy (a bf16 norm's input) from one autograd
// node: (x, x.to(bf16)). Its backward returns g_x + g_bf16 in one mixed-dtype add, where
// autograd would cast g_bf16 to float32 in one kernel and add in another; the sum is the
// same (float32 adds of the same values). Used by the pre-LN blocks on the bf16 path
// (off with set_split_norm_input(false), for A/B measurements).
std::pair<torch::Tensor, torch::Tensor> split_for_bf16_norm(const torch::Tensor& x);
void set_split_norm_input(bool on);
bool split_norm_input();

// The norm in front of a pre-LN branch, with the residual add before it: x = r + h + hb (h
// undefined: x = r; hb, the bias of the layer that made h, needs h), y = ln(x). for_gemm: y as
// layer_norm_for_gemm gives it (bf16 on the CUDA bf16 path, the float32 residual split as in the
// blocks); else (the final norm) y = ln(x), the model's float32 output. Under CUDA bf16 autocast
// (d % 8 == 0, d <= 1024) one fused kernel (kernels/add_layer_norm.cu, built with the CUDA kernels)
// reads r and h once and writes x (float32) and y; its backward writes dx = dx_next + LayerNorm
// backward(dy) once, the gradient of both r and h, and the weight and bias gradients (float32
// weights, float32 statistics), and hb's as dx's column sums (so that hb's layer needs no
// bias-gradient GEMM). Elsewhere, or with set_fused_add_layer_norm(false), the separate ops as
// before.
struct AddNorm {
  torch::Tensor x, y;
};
AddNorm add_layer_norm(const torch::Tensor& r, const torch::Tensor& h, torch::nn::LayerNorm& ln,
                       bool for_gemm = true, const torch::Tensor& hb = {});
// The fused kernel: on by default (when built); off for A/B measurements and tests. Process-wide.
void set_fused_add_layer_norm(bool on);
// Whether add_layer_norm takes the fused kernel for these inputs.
bool fused_add_norm_path(const torch::Tensor& r, const torch::Tensor& h, const torch::nn::LayerNorm& ln);

// A pre-LN residual stream whose last branch output is not added yet: x = r + h + hb (h undefined:
// x = r; hb, undefined or the bias of h's output layer), so that the add can go into the next norm's
// kernel.
struct Residual {
  torch::Tensor r, h, hb;
  torch::Tensor sum() const { return h.defined() ? (hb.defined() ? r + h + hb : r + h) : r; }
};

// The output layers' biases of pre-LN branches (attention's proj, the feed-forward's fc2) added in
// the fused add + LayerNorm after them, which then also gives their gradients: on by default where
// that kernel runs, without LayerScale and active dropout; off for A/B measurements. Process-wide.
void set_branch_bias_in_norm(bool on);

// Sigmoid attention without QK-norm takes the fused projection packed (kernels::sigmoid_attention_packed:
// on the CUDA kernel its gradient is written packed, with no stack of dq, dk, dv). On by default; off
// for A/B measurements (then q, k, v views as for softmax). Process-wide.
void set_packed_qkv_attention(bool on);

// What the attention layers share in one forward pass.
struct AttentionContext {
  torch::Tensor lengths;   // [B] int32 on the device
  torch::Tensor key_mask;  // [B, 1, 1, N] bool (true = attend), undefined when nothing is padded
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& c);
  // [B, N, d]; add_proj_bias false: proj's bias is left to the caller.
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx, bool add_proj_bias = true);
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  torch::nn::LayerNorm q_norm{nullptr}, k_norm{nullptr};

 private:
  ModelConfig c_;
  bool sigmoid_ = false;
};
TORCH_MODULE(Attention);

class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x, bool add_fc2_bias = true);  // add_fc2_bias: as feed_forward's add_b2
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  bool gelu_tanh_ = false;
};
TORCH_MODULE(FeedForward);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const AttentionContext& ctx);
  // Pre-LN: the block on a pending residual (x = in.r + in.h), returning its own pending one,
  // so that each add goes into the following norm (add_layer_norm).
  Residual forward_residual(const Residual& in, const AttentionContext& ctx);
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  Attention attn{nullptr};
  FeedForward ffn{nullptr};
  torch::Tensor gamma1, gamma2;  // LayerScale, undefined when off

 private:
  bool pre_ln_ = true;
  double dropout_ = 0.0;
};
TORCH_MODULE(Block);

// Mean cross-entropy of logits [M, V] against targets [M] (int64), float32. For CUDA bf16 logits one
// kernel each way (kernels/cross_entropy.cu): float32 statistics straight from the bf16 logits and a bf16
// gradient, where LibTorch's float32 cross-entropy needs a float32 copy of the logits, its log-softmax
// and a float32 gradient cast back. Elsewhere, or with set_fused_cross_entropy(false), LibTorch's on
// float32 (float64 logits stay float64). A target outside [0, V) gives NaN on the fused path.
torch::Tensor mean_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets);
void set_fused_cross_entropy(bool on);

struct MlmOutput {
  torch::Tensor loss;     // scalar float32: mean cross-entropy over masked positions
  torch::Tensor logits;   // [M, V] at the masked positions
  torch::Tensor targets;  // [M] int64
  int64_t n_masked = 0;
};

class ModelImpl : public torch::nn::Module {
 public:
  explicit ModelImpl(const ModelConfig& c);
  // Hidden states [B, N, d] after the final norm.
  torch::Tensor forward(const Inputs& in);
  // Logits only at masked positions (labels != kIgnoreLabel): gather rows, then project.
  MlmOutput mlm(const torch::Tensor& hidden, const Inputs& in);
  MlmOutput mlm(const torch::Tensor& hidden, const torch::Tensor& labels);
  MlmOutput mlm(const torch::Tensor& hidden, const torch::Tensor& positions,
                const torch::Tensor& targets);
  // Cell embeddings: the CLS output, [B, d].
  static torch::Tensor cell_embedding(const torch::Tensor& hidden) { return hidden.select(1, 0); }

  const ModelConfig& config() const { return c_; }
  int64_t num_parameters() const;
  std::vector<std::string> block_names() const;  // "embed", "block0".., "head"
  // Parameters by block_names() group, for per-block gradient norms.
  std::vector<std::vector<torch::Tensor>> parameter_groups() const;

  torch::nn::Embedding gene_emb{nullptr}, bin_emb{nullptr}, pos_emb{nullptr};
  torch::nn::LayerNorm emb_norm{nullptr}, final_norm{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Linear head_dense{nullptr};
  torch::nn::LayerNorm head_norm{nullptr};
  torch::Tensor head_bias;  // [V]; the head's weight is gene_emb.weight

 private:
  ModelConfig c_;
};
TORCH_MODULE(Model);

}  // namespace sctrain::model
