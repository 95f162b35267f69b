// sctrain prepare: h5ad files -> vocabulary, gene medians and a manifest (a prepared DIR).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>

#include "command.h"
#include "data/corpus.h"
#include "data/gene_table.h"
#include "data/loader.h"
#include "util/json.h"
#include "util/log.h"

namespace sctrain::app {
namespace {

struct PrepareArgs {
  std::vector<std::string> data;
  std::string out, matrix = "X", mode = "rank", genes = "auto", vocab, stats_from;
  int max_len = 2048, n_bins = 51;
  bool json = false, time_batches = false;
  int show = 0;
  int64_t batch_size = 32, token_budget = 0;
  int threads = 2;
};

double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

int run_prepare(const PrepareArgs& a) {
  data::PrepareOptions o;
  for (const auto& d : a.data) o.sources.push_back(data::parse_source(d, a.matrix));
  o.tokenize.mode = data::parse_mode(a.mode);
  o.tokenize.max_len = a.max_len;
  o.tokenize.n_bins = a.n_bins;
  o.gene_table = a.genes == "auto" ? data::default_gene_table() : (a.genes == "none" ? "" : a.genes);
  if (a.genes == "auto" && o.gene_table.empty())
    log::warn("no gene table found (data/genes/human_genes.tsv or $SCTRAIN_GENES): gene names are matched exactly");
  o.vocab_file = a.vocab;
  o.stats_from = a.stats_from;
  o.keep_rows = a.time_batches;
  o.threads = a.threads;

  auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = process_cpu_seconds();
  data::PreparedCorpus corpus = data::prepare_corpus(o);
  if (!a.out.empty()) {
    data::save_corpus(corpus, a.out);
    log::info(str("wrote ", a.out, "/{manifest.json,vocab.tsv,gene_medians.tsv,columns_*.tsv}"));
  }

  // Optional: one epoch of training batches from the same in-memory corpus, timed end to end.
  double batch_secs = 0, total_secs = 0;
  int64_t n_batches = 0, batch_cells = 0, batch_tokens = 0, padded = 0;
  if (a.time_batches) {
    data::LoaderConfig cfg;
    cfg.batch_size = a.batch_size;
    cfg.token_budget = a.token_budget;
    cfg.val_fraction = 0;
    cfg.threads = a.threads;
    auto t1 = std::chrono::steady_clock::now();
    data::Loader loader(corpus, cfg);
    n_batches = loader.batches_per_epoch();
    for (int64_t b = 0; b < n_batches; ++b) {
      data::Batch x = loader.next();
      batch_cells += x.batch_size;
      batch_tokens += x.n_tokens();
      padded += x.batch_size * x.seq_len;
    }
    auto t2 = std::chrono::steady_clock::now();
    batch_secs = std::chrono::duration<double>(t2 - t1).count();
    total_secs = std::chrono::duration<double>(t2 - t0).count();
    log::debug(str("h5ad -> batches: ", process_cpu_seconds() - cpu0, " s of CPU in ", total_secs, " s"));
    log::info(str("h5ad -> ", n_batches, " batches: ", batch_cells, " cells, ", batch_tokens, " tokens in ", total_secs,
                  " s (", static_cast<int64_t>(batch_cells / total_secs), " cells/s, ",
                  static_cast<int64_t>(batch_tokens / total_secs), " tokens/s; padding ",
                  100.0 * (padded - batch_tokens) / std::max<int64_t>(padded, 1), "%)"));
  }

  if (a.show > 0) {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < std::min<int64_t>(a.show, corpus.n_cells); ++i) ids.push_back(i);
    auto cells = data::tokenize_cells(corpus, ids);
    for (size_t i = 0; i < cells.size(); ++i) {
      std::string line = str("cell ", ids[i], ":");
      for (size_t k = 0; k < std::min<size_t>(cells[i].genes.size(), 20); ++k) {
        line += " " + corpus.vocab.name(cells[i].genes[k]);
        if (!cells[i].bins.empty()) line += str("/", int(cells[i].bins[k]));
      }
      if (cells[i].genes.size() > 20) line += str(" ... (", cells[i].genes.size(), " genes)");
      std::fprintf(a.json ? stderr : stdout, "%s\n", line.c_str());
    }
  }

  if (a.json) {
    std::string s = data::summary_json(corpus);
    if (a.time_batches) {
      json::Writer w;
      w.begin_object();
      w.field("batches", n_batches).field("cells", batch_cells).field("tokens", batch_tokens);
      w.field("padded_tokens", padded).field("seconds_total", total_secs).field("seconds_batches", batch_secs);
      w.field("cells_per_s", batch_cells / total_secs).field("tokens_per_s", batch_tokens / total_secs);
      w.end_object();
      s.pop_back();  // splice into the summary object
      s += ",\"time_batches\":" + w.str() + "}";
    }
    std::printf("%s\n", s.c_str());
  }
  return 0;
}

}  // namespace

SCTRAIN_COMMAND({"prepare", "Tokenize h5ad files: gene vocabulary, medians, manifest (a prepared DIR)", 20,
                 [](CLI::App& cmd) -> std::function<int()> {
  auto a = std::make_shared<PrepareArgs>();
  cmd.description(
      "Map the genes of one or many .h5ad files onto one vocabulary and compute what tokenization needs.\n\n"
      "Genes are matched through data/genes/human_genes.tsv: symbols, aliases and Ensembl IDs (version\n"
      "suffix stripped) become one token per gene (its Ensembl ID, else its symbol), so a file naming genes\n"
      "by Ensembl ID and one naming them by symbol share tokens. Names not in the table (e.g. mouse genes)\n"
      "keep their own name as a token. Columns mapping to one token are summed.\n\n"
      "Which matrix: --matrix for all files, or per file FILE:MATRIX with MATRIX = X, raw/X or layers/NAME\n"
      "(e.g. data/a.h5ad:layers/counts). Values <= 0 are not expressed; NaN is an error.\n\n"
      "Modes (--mode):\n"
      "  rank    (default, Geneformer-style) normalise each cell to 10,000, divide by the gene's median\n"
      "          over the corpus, order genes by that descending (ties: smaller token id), CLS + top max-len-1\n"
      "  binned  (scGPT-style) same gene order; each gene also carries an expression bin 1..n-bins-1\n"
      "          (quantile of the cell's expressed values; 0 = not expressed)\n\n"
      "DIR gets manifest.json (inputs, settings, per-file mapping, summary), vocab.tsv (id<TAB>name;\n"
      "0-4 = <pad> <cls> <mask> <unk> <eos>), gene_medians.tsv and columns_<i>.tsv (column -> token).\n"
      "Training reads DIR (`--data DIR`) or prepares in memory from the files themselves.\n\n"
      "--stats-from DIR tokenizes new data (e.g. for fine-tuning) with the vocabulary and gene medians of\n"
      "an earlier prepared DIR, as Geneformer does with its pretraining medians: genes outside that\n"
      "vocabulary are dropped (counted per file: genes_dropped), genes it never saw expressed are ranked\n"
      "with median 1 (counted: genes_without_median).\n\n"
      "Examples:\n"
      "  sctrain prepare --data data/pbmc3k_seurat.h5ad --out prepared/pbmc3k --json\n"
      "  sctrain prepare --data a.h5ad b.h5ad:raw/X --mode binned --max-len 1024 --out prepared/ab\n"
      "  sctrain prepare --data new.h5ad --stats-from prepared/pbmc3k --out prepared/new\n"
      "  sctrain prepare --data data/pbmc3k_seurat.h5ad --show 3             # look at tokens\n"
      "  sctrain prepare --data data/pbmc3k_seurat.h5ad --time-batches --json  # h5ad -> batches speed");
  cmd.add_option("--data", a->data, "input .h5ad files, FILE or FILE:MATRIX")->required()->expected(1, -1);
  cmd.add_option("--out", a->out, "write the prepared corpus into this directory");
  cmd.add_option("--matrix", a->matrix, "matrix of files without :MATRIX (X, raw/X, layers/NAME)")->capture_default_str();
  cmd.add_option("--max-len", a->max_len, "tokens per cell, CLS included")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  cmd.add_option("--mode", a->mode, "rank or binned")->capture_default_str()->check(CLI::IsMember({"rank", "binned"}));
  cmd.add_option("--n-bins", a->n_bins, "binned mode: bins including bin 0")->capture_default_str()->check(CLI::Range(2, 256));
  cmd.add_option("--genes", a->genes, "gene table; 'auto' finds data/genes/human_genes.tsv, 'none' matches names exactly")
      ->capture_default_str();
  cmd.add_option("--vocab", a->vocab, "use this vocab.tsv instead of building one from the data (unknown genes dropped)");
  cmd.add_option("--stats-from", a->stats_from,
                 "tokenize with the vocabulary and gene medians of this prepared DIR (e.g. the pretraining corpus); "
                 "genes outside its vocabulary are dropped and counted")
      ->check(CLI::ExistingDirectory)
      ->excludes("--vocab");
  cmd.add_flag("--json", a->json, "print one JSON summary on stdout (n_cells, n_genes, genes_unmapped, tokens_mean, ...)");
  cmd.add_option("--show", a->show, "print the first N cells' tokens (first 20 genes each)");
  cmd.add_flag("--time-batches", a->time_batches, "also build one epoch of masked, padded batches and time h5ad -> batches");
  cmd.add_option("--batch-size", a->batch_size, "with --time-batches: cells per batch")->capture_default_str();
  cmd.add_option("--token-budget", a->token_budget, "with --time-batches: batch_size x padded length cap (0 = off)")
      ->capture_default_str();
  cmd.add_option("--threads", a->threads, "threads for medians and tokenization; batch workers with --time-batches")->capture_default_str();
  return [a] { return run_prepare(*a); };
}});

}  // namespace sctrain::app
