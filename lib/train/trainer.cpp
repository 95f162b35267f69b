#include "train/trainer.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <csignal>
#include <cstdio>
#include <fstream>

#include "data/corpus.h"
#include "data/gene_table.h"
#include "data/loader.h"
#include "train/checkpoint.h"
#include "train/engine.h"
#include "util/json.h"
#include "util/log.h"

namespace fs = std::filesystem;

namespace sctrain::train {
namespace {

// ---- Signals: finish the step, checkpoint, exit -----------------------------------------

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) {
  if (g_signal.load() != 0) {  // a second signal: stop now
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
  g_signal.store(sig);
}

class SignalScope {
 public:
  explicit SignalScope(bool on) : on_(on) {
    if (!on_) return;
    g_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalScope() {
    if (!on_) return;
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    g_signal = 0;  // handled: a later run in this process (tests) starts clean
  }

 private:
  bool on_;
  struct sigaction old_int_ {}, old_term_ {};
};

// ---- Console ----------------------------------------------------------------------------

class Console {
 public:
  Console() : tty_(::isatty(STDERR_FILENO)) {}
  bool tty() const { return tty_; }
  void progress(const std::string& line) {
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    std::fflush(stderr);
    open_ = true;
  }
  void say(const std::string& msg) {
    end_line();
    log::info(msg);
  }
  void warn(const std::string& msg) {
    end_line();
    log::warn(msg);
  }
  void end_line() {
    if (open_) std::fprintf(stderr, "\n");
    open_ = false;
  }

 private:
  bool tty_ = false, open_ = false;
};

std::string human(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

std::string duration(double s) {
  char buf[32];
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(t / 3600), (long long)(t % 3600 / 60));
  else std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

std::string fixed(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// ---- metrics.jsonl -------------------------------------------------------------------------

// A number field of one of our JSON lines (the writer is ours: `"key":value`).
std::optional<double> json_number(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  auto p = line.find(k);
  if (p == std::string::npos) return std::nullopt;
  const char* s = line.c_str() + p + k.size();
  char* end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s) return std::nullopt;
  return v;
}

// Keeps only the lines of steps <= step (a resumed run rewrites what followed its checkpoint).
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    auto s = json_number(line, "step");
    if (s && *s <= static_cast<double>(step)) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

struct LossSummary {
  std::optional<std::pair<int64_t, double>> first, last, val_first, val_last;
  int64_t skipped = 0;
};

LossSummary summarize_metrics(const fs::path& path) {
  LossSummary s;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto step = json_number(line, "step");
    if (!step) continue;
    if (auto v = json_number(line, "val_loss")) {
      if (!s.val_first) s.val_first = {{static_cast<int64_t>(*step), *v}};
      s.val_last = {{static_cast<int64_t>(*step), *v}};
    } else if (auto l = json_number(line, "loss")) {
      if (!s.first) s.first = {{static_cast<int64_t>(*step), *l}};
      s.last = {{static_cast<int64_t>(*step), *l}};
    }
    if (line.find("\"skipped\":true") != std::string::npos) ++s.skipped;
  }
  return s;
}

data::LoaderConfig loader_config(const Config& cfg) {
  data::LoaderConfig lc;
  lc.batch_size = cfg.train.batch_size;
  lc.token_budget = cfg.data.token_budget;
  lc.val_fraction = cfg.data.val_fraction;
  lc.split_seed = static_cast<uint64_t>(cfg.data.split_seed);
  lc.seed = static_cast<uint64_t>(cfg.train.seed);
  lc.mask = true;
  lc.mask_prob = cfg.data.mask_prob;
  lc.mask_token = cfg.data.mask_token;
  lc.mask_random = cfg.data.mask_random;
  lc.fill_to_max_len = cfg.data.fill_to_max_len;
  lc.threads = static_cast<int>(cfg.data.threads);
  return lc;
}

data::PrepareOptions prepare_options(const Config& cfg) {
  data::PrepareOptions po;
  po.tokenize.mode = data::parse_mode(cfg.data.mode);
  po.tokenize.max_len = static_cast<int32_t>(cfg.model.max_len);
  po.tokenize.n_bins = static_cast<int32_t>(cfg.data.n_bins);
  po.gene_table = cfg.data.gene_table == "auto" ? data::default_gene_table() : cfg.data.gene_table;
  po.keep_rows = true;
  po.threads = static_cast<int>(std::max<int64_t>(1, cfg.data.threads));
  return po;
}

std::string describe_model(const model::ModelConfig& m, int64_t params) {
  const int64_t emb = m.vocab_size * m.d_model + (m.n_bins + (m.position_embedding ? m.max_len : 0)) * m.d_model;
  return str("model: ", m.n_layers, " layers x ", m.d_model, " wide, ", m.n_heads, " heads, FFN ", m.d_ff,
             ", ", m.attention, " attention, ", m.norm, "-LN", m.qk_norm ? ", QK-norm" : "",
             m.layer_scale > 0 ? ", LayerScale" : "", "; vocab ", m.vocab_size, "; ", params,
             " parameters (", human(static_cast<double>(params)), ", of which ",
             human(static_cast<double>(emb)), " in embeddings)");
}

}  // namespace

int pretrain(Config cfg, const PretrainOptions& opts) {
  validate(cfg);
  if (cfg.data.files.empty())
    throw ConfigError("no data: give --data FILE.h5ad (or data.files in the config)");
  for (const auto& f : cfg.data.files) {
    const std::string path = data::parse_source(f).path;
    if (!fs::exists(path)) throw ConfigError(str("data file not found: ", path));
  }
  const fs::path out(opts.out_dir);
  const fs::path ckdir = out / "checkpoints";
  const fs::path metrics_path = out / "metrics.jsonl";
  std::optional<CheckpointRef> resume_from;
  if (opts.resume) {
    resume_from = latest_checkpoint(ckdir);
    if (!resume_from) throw std::runtime_error(str("--resume: no checkpoint in ", ckdir.string()));
  } else if (latest_checkpoint(ckdir)) {
    throw std::runtime_error(str(ckdir.string(), " already holds checkpoints: pass --resume to continue, "
                                 "or choose another --out"));
  }
  fs::create_directories(out);
  if (cfg.train.threads > 0) torch::set_num_threads(static_cast<int>(cfg.train.threads));

  Console con;
  // Data: the files are read and tokenized in memory.
  data::PreparedCorpus corpus = data::open_corpus(cfg.data.files, prepare_options(cfg));
  cfg.model.vocab_size = corpus.vocab.size();
  cfg.model.n_bins = cfg.data.mode == "binned" ? cfg.data.n_bins : 0;
  write_file_atomic(out / "config.yaml", to_yaml(cfg));
  if (!resume_from) data::save_corpus(corpus, (out / "corpus").string());  // vocabulary for eval

  Engine engine(cfg);
  con.say(describe_model(cfg.model, engine.num_parameters()));
  data::Loader loader(corpus, loader_config(cfg));
  con.say(str("data: ", corpus.n_cells, " cells, ", loader.n_train_cells(), " train / ",
              loader.n_val_cells(), " validation, ", loader.batches_per_epoch(),
              " batches per epoch; device ", engine.device().str(), engine.autocast() ? " (bf16 autocast)" : " (fp32)",
              ", ", torch::get_num_threads(), " CPU threads"));
  std::vector<data::Batch> val;
  if (cfg.train.val_every > 0 && loader.n_val_cells() > 0) {
    val = loader.validation_batches();
    if (cfg.train.val_batches > 0 && static_cast<int64_t>(val.size()) > cfg.train.val_batches)
      val.resize(cfg.train.val_batches);
  }

  if (resume_from) {
    engine.load(resume_from->dir);
    engine.set_step(resume_from->step);
    loader.restore(data::LoaderState::from_json(read_file(resume_from->dir / "loader.json")));
    truncate_metrics(metrics_path, resume_from->step);
    con.say(str("resumed from ", resume_from->dir.string(), " (step ", resume_from->step, ")"));
  } else if (fs::exists(metrics_path)) {
    fs::remove(metrics_path);
  }
  std::ofstream metrics(metrics_path, std::ios::app);
  if (!metrics) throw std::runtime_error(str("cannot write ", metrics_path.string()));

  auto save = [&](int64_t step) {
    const std::string yaml = to_yaml(cfg);
    const std::string loader_json = loader.state().to_json();
    json::Writer meta;
    meta.begin_object()
        .field("step", step)
        .field("params", engine.num_parameters())
        .field("vocab_size", cfg.model.vocab_size)
        .field("time", static_cast<int64_t>(std::time(nullptr)))
        .end_object();
    auto dir = write_checkpoint(ckdir, step, [&](const fs::path& tmp) {
      engine.save(tmp);
      std::ofstream(tmp / "config.yaml") << yaml;
      std::ofstream(tmp / "loader.json") << loader_json;
      std::ofstream(tmp / "meta.json") << meta.str() << "\n";
    });
    prune_checkpoints(ckdir, cfg.train.keep_checkpoints);
    return dir;
  };
  auto validate_now = [&](int64_t step) {
    if (val.empty()) return;
    auto t0 = std::chrono::steady_clock::now();
    EvalStats e = engine.evaluate(val);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json::Writer w;
    w.begin_object().field("step", step).field("val_loss", e.loss).field("val_masked", e.masked)
        .field("val_time_s", secs).end_object();
    metrics << w.str() << "\n";
    metrics.flush();
    con.say(str("step ", step, ": validation loss ", fixed(e.loss, 4), " over ", e.masked, " masked genes"));
  };

  const int64_t stop = cfg.train.stop_at > 0 ? std::min(cfg.train.stop_at, cfg.train.max_steps) : cfg.train.max_steps;
  if (!resume_from) validate_now(0);
  SignalScope signals(opts.handle_signals);
  int exit_code = 0;
  fs::path last_ckpt = resume_from ? resume_from->dir : fs::path();
  int64_t last_saved = resume_from ? resume_from->step : -1;
  const auto run_start = std::chrono::steady_clock::now();
  const int64_t first_step = engine.step();
  double tok_window = 0, time_window = 0;
  const bool stop_on_nan = cfg.train.nan_policy == "stop";
  // Steps after which the trainer validates, checkpoints or ends: it collects them at once.
  // Other steps are collected one step late, after the next step's forward and backward are
  // queued, so that the GPU never waits for the host (Engine::collect). The order of GPU work
  // is the same either way, so are the results.
  auto boundary = [&](int64_t step) {
    return step >= stop || (cfg.train.val_every > 0 && step % cfg.train.val_every == 0) ||
           (cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0);
  };
  std::deque<int64_t> epochs;  // the loader's epoch after each uncollected step's batches
  auto t_last = std::chrono::steady_clock::now();  // the previous step was done
  engine.reset_peak_memory();

  // Collects the oldest updated step and writes its metrics line and console line.
  auto finish = [&]() -> StepStats {
    StepStats s = engine.collect();
    // From when the previous step's work was done to when this one's was (not when each was
    // collected: on the CPU a step is collected after the next one has run).
    const auto now = s.done;
    const double secs = std::chrono::duration<double>(now - t_last).count();
    t_last = now;
    const int64_t step = s.step;
    const double tps = static_cast<double>(s.tokens) / secs, tflops = s.flops / secs / 1e12;
    const double mem = engine.peak_memory_gib();
    engine.reset_peak_memory();
    const int64_t epoch = epochs.front();
    epochs.pop_front();

    json::Writer w;
    w.begin_object()
        .field("step", step)
        .field("loss", s.loss)
        .field("lr", s.lr)
        .field("grad_norm", s.grad_norm)
        .field("block_grad_norms", s.block_grad_norms)
        .field("tokens", s.tokens)
        .field("padded_tokens", s.padded_tokens)
        .field("masked", s.masked)
        .field("step_time_s", secs)
        .field("tokens_per_s", tps)
        .field("tflops", tflops);
    if (mem >= 0) w.field("mem_peak_gib", mem);
    else w.key("mem_peak_gib").null();
    w.field("epoch", epoch);
    if (!s.applied) w.field("skipped", true);
    w.end_object();
    metrics << w.str() << "\n";
    metrics.flush();

    tok_window += static_cast<double>(s.tokens);
    time_window += secs;
    const double elapsed = std::chrono::duration<double>(now - run_start).count();
    const double eta = elapsed / static_cast<double>(step - first_step) * static_cast<double>(stop - step);
    std::string line = str("step ", step, "/", stop, " | loss ", fixed(s.loss, 4), " | lr ",
                           fixed(s.lr * 1e3, 3), "e-3 | gnorm ", fixed(s.grad_norm, 3), " | ",
                           human(tok_window / time_window), " tok/s | ", fixed(tflops, 3), " TFLOP/s");
    if (mem >= 0) line += str(" | mem ", fixed(mem, 1), " GiB");
    line += " | ETA " + duration(eta);
    if (con.tty()) {
      con.progress(line);
    } else if (step % cfg.train.log_every == 0 || step == stop || step == first_step + 1) {
      con.say(line);
    }
    if (step % cfg.train.log_every == 0) tok_window = time_window = 0;

    if (!s.finite)
      con.warn(str("step ", step, ": non-finite ", std::isfinite(s.loss) ? "gradient" : "loss",
                   " (loss ", s.loss, ", grad norm ", s.grad_norm, "): update ",
                   stop_on_nan ? "dropped; stopping (nan_policy: stop)" : "skipped (nan_policy: skip)"));
    return s;
  };

  bool queued = false;  // a step is updated but not collected
  while (engine.step() < stop) {
    std::vector<data::Batch> micro;
    for (int64_t i = 0; i < cfg.train.grad_accum; ++i) micro.push_back(loader.next());
    epochs.push_back(loader.state().epoch);
    engine.forward_backward(micro);
    if (queued) {  // the previous step, while this one runs on the GPU
      queued = false;
      if (!finish().finite && stop_on_nan) {
        engine.discard();  // this step never gets its update
        exit_code = 3;
        break;
      }
    }
    engine.update();
    const int64_t step = engine.step();
    if (!boundary(step) && g_signal.load() == 0) {
      queued = true;
      continue;
    }
    if (!finish().finite && stop_on_nan) {
      exit_code = 3;
      break;
    }
    if (cfg.train.val_every > 0 && step % cfg.train.val_every == 0 && step != stop) validate_now(step);
    if (cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0 && step != stop) {
      last_ckpt = save(step);
      last_saved = step;
    }
    t_last = std::chrono::steady_clock::now();  // validation and checkpoints are no step's time
    if (g_signal.load() != 0) {
      const int sig = g_signal.load();
      con.say(str(sig == SIGINT ? "SIGINT" : "SIGTERM", ": stopping after step ", step));
      exit_code = 128 + sig;
      break;
    }
  }
  con.end_line();
  const int64_t final_step = engine.step();
  if (exit_code == 0 && final_step == stop && cfg.train.val_every > 0 && final_step != first_step)
    validate_now(final_step);
  if (exit_code != 3 && last_saved != final_step) {
    last_ckpt = save(final_step);
    last_saved = final_step;
  }
  metrics.close();

  if (opts.summary) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
    LossSummary ls = summarize_metrics(metrics_path);
    std::string msg;
    msg += exit_code == 0 ? str("\ndone: step ", final_step, " of ", cfg.train.max_steps)
           : exit_code == 3 ? str("\nstopped at step ", final_step, ": non-finite loss or gradient")
                            : str("\ninterrupted at step ", final_step, " (resume with --resume)");
    msg += str(" in ", duration(elapsed), " this run\n");
    if (ls.first && ls.last)
      msg += str("  train loss   ", fixed(ls.first->second, 4), " (step ", ls.first->first, ") -> ",
                 fixed(ls.last->second, 4), " (step ", ls.last->first, ")\n");
    if (ls.val_first && ls.val_last && ls.val_first->first != ls.val_last->first)
      msg += str("  val loss     ", fixed(ls.val_first->second, 4), " (step ", ls.val_first->first, ") -> ",
                 fixed(ls.val_last->second, 4), " (step ", ls.val_last->first, ")\n");
    else if (ls.val_first)
      msg += str("  val loss     ", fixed(ls.val_first->second, 4), " (step ", ls.val_first->first, ")\n");
    if (ls.skipped) msg += str("  skipped      ", ls.skipped, " steps with non-finite loss/gradients\n");
    if (!last_ckpt.empty()) msg += str("  checkpoint   ", last_ckpt.string(), "\n");
    msg += str("  metrics      ", metrics_path.string(), "\n");
    msg += str("  config       ", (out / "config.yaml").string(), "\n");
    std::fputs(msg.c_str(), stdout);
    std::fflush(stdout);
  }
  return exit_code;
}

}  // namespace sctrain::train
