// Vocabulary files and gene-name mapping through the gene table.
#include <gtest/gtest.h>

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/gene_table.h"
#include "data/vocab.h"
#include "test_data.h"

using namespace sctrain::data;
namespace fs = std::filesystem;

static std::string temp_path(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("sctrain_test_data_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return (d / name).string();
}

TEST(Vocabulary, SpecialsFirstAndRoundTrip) {
  Vocabulary v = Vocabulary::from_genes({"GENE_A", "GENE_B"});
  EXPECT_EQ(v.size(), kNumSpecial + 2);
  EXPECT_EQ(v.find("<pad>"), kPad);
  EXPECT_EQ(v.find("<mask>"), kMask);
  EXPECT_EQ(v.find("GENE_A"), kNumSpecial);
  EXPECT_EQ(v.find("nope"), -1);
  std::string p = temp_path("vocab.tsv");
  v.save(p);
  Vocabulary w = Vocabulary::load(p);
  EXPECT_EQ(w.names(), v.names());
}

TEST(Vocabulary, RejectsBadFiles) {
  EXPECT_THROW(Vocabulary::from_genes({"A", "A"}), std::invalid_argument);
  std::string p = temp_path("bad_vocab.tsv");
  std::ofstream(p) << "0\t<pad>\n1\tGENE\n";
  EXPECT_THROW(Vocabulary::load(p), std::runtime_error);
  std::ofstream(p) << "<pad>\n<cls>\n<mask>\n<unk>\n<eos>\nG1\nG2\n";  // names only
  EXPECT_EQ(Vocabulary::load(p).find("G2"), kNumSpecial + 1);
}

// The vocabulary's order: sort_unique_names orders as std::sort on the names does (it compares
// 16-byte integer keys first): shared 16-byte prefixes, prefixes of each other, zero bytes,
// bytes >= 0x80 (UTF-8), empty and long names, repeats. And every name is found by its id.
TEST(Vocabulary, SortedUniqueNamesAndLookupOfManyNames) {
  std::vector<std::string> pool = {"", "A", "AB", std::string("AB\0", 3), std::string("AB\0C", 4), "ENSG00000121410",
                                   "ENSG00000121410X", "ENSG0000012141", "ENSG00000121410.1", "\xc3\xa9t\xc3\xa9",
                                   "\x80", "\x7f", std::string(40, 'Z'), std::string(40, 'Z') + "a", "ENSG00000121410"};
  uint64_t x = 7;
  for (int i = 0; i < 3000; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    std::string n = (x >> 60) % 2 ? "ENSG000001" : "";
    for (int k = 0, len = static_cast<int>(x >> 33) % 22; k < len; ++k) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      n += static_cast<char>((x >> 40) % 4 == 0 ? "\x00\x01\xfe\x80"[(x >> 45) % 4] : 'A' + (x >> 50) % 4);
    }
    pool.push_back(n);
  }
  std::vector<std::string_view> got(pool.begin(), pool.end()), want(got);
  sort_unique_names(got);
  std::sort(want.begin(), want.end());
  want.erase(std::unique(want.begin(), want.end()), want.end());
  EXPECT_EQ(got, want);
  std::vector<std::string> genes;
  for (std::string_view n : want)
    if (!n.empty()) genes.emplace_back(n);
  Vocabulary v = Vocabulary::from_genes(genes);
  Vocabulary copy = v;
  for (int32_t id = 0; id < v.size(); ++id) {
    ASSERT_EQ(v.find(v.name(id)), id);
    ASSERT_EQ(copy.find(v.name(id)), id);
  }
  EXPECT_EQ(v.find("not there"), -1);
  EXPECT_EQ(v.find("<mask>"), kMask);
  EXPECT_THROW(Vocabulary::from_genes({"G1", "G2", "G1"}), std::invalid_argument);
}

TEST(GeneTable, StripsVersions) {
  EXPECT_EQ(strip_ensembl_version("ENSG00000121410.12"), "ENSG00000121410");
  EXPECT_EQ(strip_ensembl_version("ENSG00000121410"), "ENSG00000121410");
  EXPECT_EQ(strip_ensembl_version("RP11-206L10.2"), "RP11-206L10.2");  // not Ensembl
}

TEST(GeneTable, SymbolBeatsAliasFirstGeneWinsAmbiguity) {
  std::string p = temp_path("genes.tsv");
  std::ofstream(p) << "entrez_id\tsymbol\tensembl_ids\tgene_type\taliases\n"
                      "1\tAAA\tENSG01|ENSG02\tprotein-coding\tBBB|SHARED\n"
                      "2\tBBB\t\tncRNA\tSHARED|CCC\n"
                      "3\tDDD\tENSG03\tpseudo\tSHARED\n";
  GeneTable t = GeneTable::load(p);
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(t.canonical("AAA"), "ENSG01");         // canonical: first Ensembl ID
  EXPECT_EQ(t.canonical("ENSG02.7"), "ENSG01");    // any of its IDs, version stripped
  EXPECT_EQ(t.canonical("BBB"), "BBB");            // exact symbol beats gene 1's alias; no Ensembl
  EXPECT_EQ(t.canonical("SHARED"), "ENSG01");      // alias of three genes: the first in the table
  EXPECT_EQ(t.canonical("CCC"), "BBB");
  EXPECT_EQ(t.canonical("ENSG03"), "ENSG03");
  EXPECT_FALSE(t.canonical("ZZZ").has_value());
}

// Line ends and field edges the separator scan (16 bytes at a time) must get right: CRLF lines,
// a blank line, fields past the last one used, a last line without a newline, lines longer than
// 16 bytes and shorter ones; a line missing fields names its line number.
TEST(GeneTable, CrlfBlankLinesExtraFieldsAndNoFinalNewline) {
  std::string p = temp_path("genes_crlf.tsv");
  std::ofstream(p) << "entrez_id\tsymbol\tensembl_ids\tgene_type\taliases\textra\r\n"
                      "1\tA1BG\tENSG00000121410.3\tprotein-coding\tA1B|ABG\tx\ty\r\n"
                      "\r\n"
                      "\n"
                      "2\tB\tE2\tt\tBB\tz\n"
                      "3\tA2M\tENSG00000175899\tprotein-coding\tA2MD";
  GeneTable t = GeneTable::load(p);
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(t.canonical("A1BG"), "ENSG00000121410");
  EXPECT_EQ(t.canonical("ABG"), "ENSG00000121410");
  EXPECT_EQ(t.canonical("B"), "E2");
  EXPECT_EQ(t.canonical("BB"), "E2");
  EXPECT_EQ(t.canonical("A2MD"), "ENSG00000175899");  // the last field of a last line without a newline
  EXPECT_FALSE(t.canonical("x").has_value());
  std::string q = temp_path("genes_short.tsv");
  std::ofstream(q) << "entrez_id\tsymbol\tensembl_ids\tgene_type\taliases\n1\tA\tE1\tt\tAA\n2\tB\tE2\n";
  try {
    GeneTable::load(q);
    FAIL() << "a short line loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(":3: expected 5 tab-separated fields, got 3"), std::string::npos) << e.what();
  }
}

TEST(GeneTable, HumanTable) {
  GeneTable t = GeneTable::load(sctrain::testing::project_data("genes/human_genes.tsv"));
  EXPECT_EQ(t.size(), 77614u);
  // From the table's rows (grep): A1BG = ENSG00000121410 with alias A1B; CD3E = ENSG00000198851.
  EXPECT_EQ(t.canonical("A1BG"), "ENSG00000121410");
  EXPECT_EQ(t.canonical("A1B"), "ENSG00000121410");
  EXPECT_EQ(t.canonical("ENSG00000198851.9"), "ENSG00000198851");
  EXPECT_EQ(t.canonical("CD3E"), "ENSG00000198851");
}

// Loaded for the names in use only (as prepare does: lengths and hash bits of those names
// filter the table's names before lookup), the table answers as the whole table does: symbols,
// aliases and versioned Ensembl IDs of the human table, names of lengths nothing else has, an
// empty and a 300-character name, names in no table.
TEST(GeneTable, NamesInUseAnswerAsTheWholeTable) {
  const std::string path = sctrain::testing::project_data("genes/human_genes.tsv");
  const GeneTable whole = GeneTable::load(path);
  std::vector<std::string> names = {"", std::string(300, 'A'), "ZZZ_NOT_A_GENE", "X", "SHARED", "ENSG99999999999.3"};
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  for (int k = 0; std::getline(in, line); ++k) {
    if (k % 97) continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, '\t');) f.push_back(x);
    if (f.size() > 1) names.push_back(f[1]);                                   // symbol
    if (f.size() > 2 && !f[2].empty()) names.push_back(f[2].substr(0, f[2].find('|')) + ".7");  // versioned ID
    if (f.size() > 4 && !f[4].empty()) names.push_back(f[4].substr(0, f[4].find('|')));         // an alias
  }
  ASSERT_GT(names.size(), 1000u);
  const GeneTable only = GeneTable::load(path, &names);
  int64_t found = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& n = names[i];
    EXPECT_EQ(only.canonical(n), whole.canonical(n)) << n;
    EXPECT_EQ(only.canonical_in_use(i), whole.canonical(n)) << n;  // by the name's slot
    found += whole.canonical(n).has_value();
  }
  EXPECT_FALSE(only.canonical_in_use(names.size()).has_value());
  EXPECT_GT(found, 900) << names.size() << " names";
}
