#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>

#include "util/log.h"

namespace sctrain::train {
namespace {

enum class Type { Int, Float, Bool, String, OptFloat, StringList };

const char* type_name(Type t) {
  switch (t) {
    case Type::Int: return "an integer";
    case Type::Float: return "a number";
    case Type::Bool: return "a boolean (true/false)";
    case Type::String: return "a string";
    case Type::OptFloat: return "a number or null";
    case Type::StringList: return "a list of strings";
  }
  return "?";
}
const char* short_type(Type t) {
  switch (t) {
    case Type::Int: return "int";
    case Type::Float: return "float";
    case Type::Bool: return "bool";
    case Type::String: return "string";
    case Type::OptFloat: return "float|null";
    case Type::StringList: return "list";
  }
  return "?";
}

struct Field {
  std::string key;
  Type type;
  void* ptr;
  std::string help;
};

std::vector<Field> fields(Config& c) {
  auto& m = c.model;
  auto& d = c.data;
  auto& t = c.train;
  return {
      {"model.d_model", Type::Int, &m.d_model, "width of the residual stream"},
      {"model.n_layers", Type::Int, &m.n_layers, "encoder blocks"},
      {"model.n_heads", Type::Int, &m.n_heads, "attention heads (d_model divisible by it)"},
      {"model.d_ff", Type::Int, &m.d_ff, "feed-forward hidden width"},
      {"model.max_len", Type::Int, &m.max_len, "tokens per cell, CLS included (also the tokenizer's cut)"},
      {"model.attention", Type::String, &m.attention, "softmax (SDPA) or sigmoid"},
      {"model.sigmoid_bias", Type::OptFloat, &m.sigmoid_bias, "sigmoid attention bias; null: -log(length)"},
      {"model.qk_norm", Type::Bool, &m.qk_norm, "LayerNorm on q and k per head"},
      {"model.layer_scale", Type::Float, &m.layer_scale, "LayerScale initial gamma; 0: off"},
      {"model.norm", Type::String, &m.norm, "pre (pre-LayerNorm) or post (post-LayerNorm)"},
      {"model.activation", Type::String, &m.activation,
       "feed-forward GELU: gelu (exact) or gelu_tanh (tanh approximation; fused into the GEMMs on GPU)"},
      {"model.position_embedding", Type::Bool, &m.position_embedding, "learned absolute positions"},
      {"model.dropout", Type::Float, &m.dropout, "embedding/residual/attention dropout"},
      {"model.init_std", Type::Float, &m.init_std, "std of the normal initialization"},
      {"data.files", Type::StringList, &d.files, "h5ad files (FILE[:matrix]) or a prepared DIR; --data replaces"},
      {"data.mode", Type::String, &d.mode, "rank (Geneformer-style) or binned (scGPT-style, adds bin embedding)"},
      {"data.n_bins", Type::Int, &d.n_bins, "binned mode: expression bins incl. bin 0"},
      {"data.gene_table", Type::String, &d.gene_table, "gene table; auto: data/genes/human_genes.tsv; empty: none"},
      {"data.val_fraction", Type::Float, &d.val_fraction, "cells held out for validation"},
      {"data.split_seed", Type::Int, &d.split_seed, "seed of the train/validation split"},
      {"data.mask_prob", Type::Float, &d.mask_prob, "share of gene tokens masked"},
      {"data.mask_token", Type::Float, &d.mask_token, "of the masked: replaced by <mask>"},
      {"data.mask_random", Type::Float, &d.mask_random, "of the masked: replaced by a random gene"},
      {"data.token_budget", Type::Int, &d.token_budget, "> 0: at most this many padded tokens per batch"},
      {"data.fill_to_max_len", Type::Bool, &d.fill_to_max_len, "append unexpressed genes up to max_len"},
      {"data.threads", Type::Int, &d.threads, "loader worker threads"},
      {"train.max_steps", Type::Int, &t.max_steps, "optimizer steps; the LR schedule spans them"},
      {"train.stop_at", Type::Int, &t.stop_at, "> 0: stop this run after this step (schedule unchanged)"},
      {"train.batch_size", Type::Int, &t.batch_size, "cells per micro-batch"},
      {"train.grad_accum", Type::Int, &t.grad_accum, "micro-batches per optimizer step"},
      {"train.lr", Type::Float, &t.lr, "peak learning rate"},
      {"train.min_lr", Type::Float, &t.min_lr, "learning rate at the end of the cosine"},
      {"train.warmup_steps", Type::Int, &t.warmup_steps, "linear warmup steps"},
      {"train.weight_decay", Type::Float, &t.weight_decay, "AdamW decay of matrices (not norms/biases)"},
      {"train.beta1", Type::Float, &t.beta1, "AdamW beta1"},
      {"train.beta2", Type::Float, &t.beta2, "AdamW beta2"},
      {"train.eps", Type::Float, &t.eps, "AdamW epsilon"},
      {"train.max_grad_norm", Type::Float, &t.max_grad_norm, "global gradient-norm clip; 0: no clipping"},
      {"train.seed", Type::Int, &t.seed, "seed of init, dropout and loader"},
      {"train.device", Type::String, &t.device, "auto, cpu, cuda or cuda:N"},
      {"train.precision", Type::String, &t.precision, "auto (bf16 on GPU, fp32 on CPU), bf16 or fp32"},
      {"train.threads", Type::Int, &t.threads, "CPU threads of LibTorch; 0: its default"},
      {"train.nan_policy", Type::String, &t.nan_policy, "non-finite loss/grads: skip the update or stop"},
      {"train.log_every", Type::Int, &t.log_every, "console line every N steps (when not a TTY)"},
      {"train.val_every", Type::Int, &t.val_every, "validation every N steps; 0: off"},
      {"train.val_batches", Type::Int, &t.val_batches, "validation batches used; 0: all"},
      {"train.checkpoint_every", Type::Int, &t.checkpoint_every, "checkpoint every N steps; 0: at the end only"},
      {"train.keep_checkpoints", Type::Int, &t.keep_checkpoints, "checkpoints kept (the newest)"},
  };
}

std::string where(const std::string& source, const YAML::Node& node) {
  std::string s = source.empty() ? std::string("--set") : source;
  if (node.Mark().line >= 0 && !source.empty()) s += str(":", node.Mark().line + 1);
  return s;
}

void assign(const Field& f, const YAML::Node& node, const std::string& source) {
  auto bad = [&]() {
    std::string got = node.IsScalar() ? "'" + node.Scalar() + "'" : node.IsSequence() ? "a list" : "a map";
    throw ConfigError(str("key '", f.key, "' in ", where(source, node), " expects ", type_name(f.type),
                          ", got ", got));
  };
  try {
    switch (f.type) {
      case Type::Int: {
        if (!node.IsScalar()) bad();
        *static_cast<int64_t*>(f.ptr) = node.as<int64_t>();
        break;
      }
      case Type::Float: {
        if (!node.IsScalar()) bad();
        *static_cast<double*>(f.ptr) = node.as<double>();
        break;
      }
      case Type::Bool: {
        if (!node.IsScalar()) bad();
        *static_cast<bool*>(f.ptr) = node.as<bool>();
        break;
      }
      case Type::String: {
        if (!node.IsScalar() && !node.IsNull()) bad();
        *static_cast<std::string*>(f.ptr) = node.IsNull() ? "" : node.Scalar();
        break;
      }
      case Type::OptFloat: {
        auto& o = *static_cast<std::optional<double>*>(f.ptr);
        if (node.IsNull() || (node.IsScalar() && (node.Scalar() == "null" || node.Scalar() == "~")))
          o.reset();
        else if (node.IsScalar())
          o = node.as<double>();
        else
          bad();
        break;
      }
      case Type::StringList: {
        auto& v = *static_cast<std::vector<std::string>*>(f.ptr);
        v.clear();
        if (node.IsNull()) break;
        if (node.IsScalar()) {
          v.push_back(node.Scalar());
        } else if (node.IsSequence()) {
          for (const auto& e : node) {
            if (!e.IsScalar()) bad();
            v.push_back(e.Scalar());
          }
        } else {
          bad();
        }
        break;
      }
    }
  } catch (const YAML::BadConversion&) {
    bad();
  }
}

const Field* find_field(const std::vector<Field>& fs, const std::string& key) {
  for (const auto& f : fs)
    if (f.key == key) return &f;
  return nullptr;
}

std::string known_under(const std::vector<Field>& fs, const std::string& prefix) {
  std::string s;
  for (const auto& f : fs)
    if (f.key.rfind(prefix + ".", 0) == 0) s += (s.empty() ? "" : ", ") + f.key.substr(prefix.size() + 1);
  return s;
}

void walk(const YAML::Node& node, const std::string& prefix, std::vector<Field>& fs,
          const std::string& source) {
  for (const auto& kv : node) {
    const std::string name = kv.first.as<std::string>();
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    if (const Field* f = find_field(fs, key)) {
      assign(*f, kv.second, source);
      continue;
    }
    const bool section = !known_under(fs, key).empty();
    if (section && kv.second.IsMap()) {
      walk(kv.second, key, fs, source);
      continue;
    }
    if (section)
      throw ConfigError(str("key '", key, "' in ", where(source, kv.first),
                            " is a section: it expects a map of keys (", known_under(fs, key), ")"));
    std::string hint;
    if (!prefix.empty()) hint = str(" (known keys in ", prefix, ": ", known_under(fs, prefix), ")");
    else hint = " (sections: model, data, train)";
    throw ConfigError(str("unknown key '", key, "' in ", where(source, kv.first), hint));
  }
}

// Shortest text that reads back to the same double (0.05, not 0.050000000000000003).
std::string fmt_double(double v) {
  char buf[40];
  for (int prec = 6; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string fmt_value(const Field& f) {
  std::ostringstream os;
  switch (f.type) {
    case Type::Int: os << *static_cast<int64_t*>(f.ptr); break;
    case Type::Float: os << fmt_double(*static_cast<double*>(f.ptr)); break;
    case Type::Bool: os << (*static_cast<bool*>(f.ptr) ? "true" : "false"); break;
    case Type::String: {
      YAML::Emitter e;
      e << YAML::DoubleQuoted << *static_cast<std::string*>(f.ptr);
      os << e.c_str();
      break;
    }
    case Type::OptFloat: {
      auto& o = *static_cast<std::optional<double>*>(f.ptr);
      if (o) {
        os << fmt_double(*o);
      } else {
        os << "null";
      }
      break;
    }
    case Type::StringList: {
      YAML::Emitter e;
      e << YAML::Flow << YAML::DoubleQuoted << *static_cast<std::vector<std::string>*>(f.ptr);
      os << e.c_str();
      break;
    }
  }
  return os.str();
}

}  // namespace

Config load_config(const std::string& path) {
  Config cfg;
  if (path.empty()) return cfg;
  if (!std::filesystem::exists(path)) throw ConfigError(str("config file not found: ", path));
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw ConfigError(str("cannot parse ", path, ": ", e.what()));
  }
  cfg.source = path;
  if (root.IsNull()) return cfg;
  if (!root.IsMap()) throw ConfigError(str(path, ": expects a map with sections model, data, train"));
  auto fs = fields(cfg);
  walk(root, "", fs, path);
  return cfg;
}

void apply_override(Config& cfg, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(str("--set '", assignment, "': expects key=value, e.g. model.n_layers=4"));
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  auto fs = fields(cfg);
  const Field* f = find_field(fs, key);
  if (!f) {
    auto dot = key.find('.');
    std::string hint = dot == std::string::npos ? " (keys look like train.lr)"
                                                : str(" (known keys in ", key.substr(0, dot), ": ",
                                                      known_under(fs, key.substr(0, dot)), ")");
    throw ConfigError(str("unknown key '", key, "' in --set", hint));
  }
  YAML::Node node;
  try {
    node = value.empty() ? YAML::Node(YAML::NodeType::Null) : YAML::Load(value);
  } catch (const YAML::Exception& e) {
    throw ConfigError(str("--set ", key, ": cannot parse '", value, "': ", e.what()));
  }
  if (f->type == Type::String && !node.IsScalar() && !node.IsNull()) node = YAML::Node(value);
  assign(*f, node, "");
}

void validate(const Config& cfg) {
  auto fail = [&](const std::string& key, const std::string& why) {
    throw ConfigError(str("key '", key, "'", cfg.source.empty() ? "" : " in " + cfg.source, ": ", why));
  };
  const auto& m = cfg.model;
  const auto& d = cfg.data;
  const auto& t = cfg.train;
  auto positive = [&](const std::string& key, int64_t v) {
    if (v <= 0) fail(key, str("must be > 0, got ", v));
  };
  positive("model.d_model", m.d_model);
  positive("model.n_layers", m.n_layers);
  positive("model.n_heads", m.n_heads);
  positive("model.d_ff", m.d_ff);
  if (m.max_len < 2) fail("model.max_len", "must be >= 2");
  if (m.d_model % m.n_heads) fail("model.n_heads", str("d_model ", m.d_model, " is not divisible by ", m.n_heads));
  if (m.attention != "softmax" && m.attention != "sigmoid") fail("model.attention", "expects softmax or sigmoid, got '" + m.attention + "'");
  if (m.norm != "pre" && m.norm != "post") fail("model.norm", "expects pre or post, got '" + m.norm + "'");
  if (m.activation != "gelu" && m.activation != "gelu_tanh")
    fail("model.activation", "expects gelu or gelu_tanh, got '" + m.activation + "'");
  if (m.dropout < 0 || m.dropout >= 1) fail("model.dropout", "must be in [0, 1)");
  if (m.layer_scale < 0) fail("model.layer_scale", "must be >= 0");
  if (d.mode != "rank" && d.mode != "binned") fail("data.mode", "expects rank or binned, got '" + d.mode + "'");
  if (d.mode == "binned" && (d.n_bins < 2 || d.n_bins > 256)) fail("data.n_bins", "must be in [2, 256]");
  if (d.val_fraction < 0 || d.val_fraction >= 1) fail("data.val_fraction", "must be in [0, 1)");
  if (d.mask_prob <= 0 || d.mask_prob >= 1) fail("data.mask_prob", "must be in (0, 1)");
  if (d.mask_token < 0 || d.mask_random < 0 || d.mask_token + d.mask_random > 1)
    fail("data.mask_token", "mask_token + mask_random must be in [0, 1]");
  positive("train.max_steps", t.max_steps);
  positive("train.batch_size", t.batch_size);
  positive("train.grad_accum", t.grad_accum);
  if (t.stop_at < 0) fail("train.stop_at", "must be >= 0");
  if (t.lr <= 0) fail("train.lr", "must be > 0");
  if (t.min_lr < 0 || t.min_lr > t.lr) fail("train.min_lr", "must be in [0, lr]");
  if (t.warmup_steps < 0) fail("train.warmup_steps", "must be >= 0");
  if (t.max_grad_norm < 0) fail("train.max_grad_norm", "must be >= 0 (0: off)");
  if (t.beta1 < 0 || t.beta1 >= 1) fail("train.beta1", "must be in [0, 1)");
  if (t.beta2 < 0 || t.beta2 >= 1) fail("train.beta2", "must be in [0, 1)");
  if (t.precision != "auto" && t.precision != "bf16" && t.precision != "fp32")
    fail("train.precision", "expects auto, bf16 or fp32, got '" + t.precision + "'");
  if (t.device != "auto" && t.device != "cpu" && t.device.rfind("cuda", 0) != 0)
    fail("train.device", "expects auto, cpu, cuda or cuda:N, got '" + t.device + "'");
  if (t.nan_policy != "skip" && t.nan_policy != "stop")
    fail("train.nan_policy", "expects skip or stop, got '" + t.nan_policy + "'");
  positive("train.log_every", t.log_every);
  if (t.val_every < 0) fail("train.val_every", "must be >= 0");
  if (t.checkpoint_every < 0) fail("train.checkpoint_every", "must be >= 0");
  positive("train.keep_checkpoints", t.keep_checkpoints);
}

std::string to_yaml(const Config& cfg_in) {
  Config cfg = cfg_in;
  auto fs = fields(cfg);
  std::string out, section;
  for (const auto& f : fs) {
    auto dot = f.key.find('.');
    std::string sec = f.key.substr(0, dot);
    if (sec != section) {
      out += sec + ":\n";
      section = sec;
    }
    out += "  " + f.key.substr(dot + 1) + ": " + fmt_value(f) + "\n";
  }
  return out;
}

std::string describe_keys() {
  Config cfg;
  auto fs = fields(cfg);
  std::ostringstream os;
  for (const auto& f : fs) {
    char line[256];
    std::snprintf(line, sizeof line, "  %-26s %-10s %-12s ", f.key.c_str(), short_type(f.type),
                  fmt_value(f).c_str());
    os << line << f.help << "\n";
  }
  return os.str();
}

}  // namespace sctrain::train
