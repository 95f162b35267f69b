#!/usr/bin/env python3
"""Reference rank tokenization in plain Python/anndata/numpy (the same rules as sctrain's
lib/data): a cross-check of our tokens and the baseline of the data-pipeline benchmark.

  1. read each file's matrix (X, raw/X or layers/NAME: FILE:MATRIX), map its genes through
     the human gene table onto canonical names (Ensembl ID, else symbol; names the table does
     not know are tried through var's symbol column, e.g. var/gene_symbol; then kept as they are),
     vocabulary = specials + sorted canonical names; duplicate columns are summed
  2. normalise each cell to total 1e4 (total = sum of its positive values over all columns)
  3. gene median = numpy median of the normalised non-zero values over the corpus
  4. per cell: score = normalised / median, order by score descending then token id,
     keep the first max_len-1 after CLS
  5. (--batches) shuffle, cut into batches of --batch-size, pad to the longest, mask 15%

Usage:
  scripts/tokenize_baseline.py data/pbmc68k_reduced.h5ad --cells 0,1,2 --top 10
  scripts/tokenize_baseline.py ../shared/data/kang_pbmc_ctrl.h5ad --batches --json
"""
import argparse
import json
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

SPECIALS = ["<pad>", "<cls>", "<mask>", "<unk>", "<eos>"]
PAD, CLS, MASK = 0, 1, 2
SYMBOL_COLUMNS = ["gene_symbol", "gene_symbols", "symbol", "gene_name", "gene_names", "feature_name"]


def strip_version(name):
    if name.startswith("ENS") and len(name) > 4 and "." in name:
        head, _, tail = name.rpartition(".")
        if tail.isdigit():
            return head
    return name


def load_gene_table(path):
    t = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    canonical, by_ens, by_sym, by_alias = [], {}, {}, {}
    for i, (sym, ens, aliases) in enumerate(zip(t["symbol"], t["ensembl_ids"], t["aliases"])):
        ids = [strip_version(e) for e in ens.split("|") if e]
        canonical.append(ids[0] if ids else sym)
        for e in ids:
            by_ens.setdefault(e, i)
        if sym:
            by_sym.setdefault(sym, i)
        for a in aliases.split("|"):
            if a:
                by_alias.setdefault(a, i)

    def lookup(name):
        key = strip_version(name)
        if key.startswith("ENS") and len(key) > 4 and key in by_ens:
            return canonical[by_ens[key]]
        if key in by_sym:
            return canonical[by_sym[key]]
        if key in by_alias:
            return canonical[by_alias[key]]
        return None

    return lookup


def read_matrix(spec):
    path, matrix = spec, "X"
    if ":" in spec:
        head, _, tail = spec.rpartition(":")
        if tail in ("X", "raw/X") or tail.startswith("layers/"):
            path, matrix = head, tail
    a = ad.read_h5ad(path)
    if matrix == "X":
        X, var = a.X, a.var
    elif matrix == "raw/X":
        X, var = a.raw.X, a.raw.var
    else:
        X, var = a.layers[matrix[len("layers/"):]], a.var
    # A symbol column to fall back on for names the table does not know (old Ensembl IDs).
    symbols = None
    for col in SYMBOL_COLUMNS:
        if col in var.columns and not pd.api.types.is_numeric_dtype(var[col]) and not pd.api.types.is_bool_dtype(var[col]):
            symbols = ["" if pd.isna(x) else str(x) for x in var[col]]
            break
    return path, sp.csr_matrix(X, dtype=np.float32), [str(n) for n in var.index], symbols


def prepare(specs, gene_table, max_len, log=print):
    lookup = load_gene_table(gene_table) if gene_table else (lambda n: None)
    files = []
    for spec in specs:
        path, X, names, symbols = read_matrix(spec)
        found = [lookup(n) for n in names]
        if gene_table and symbols:
            found = [f or (lookup(s) if s else None) for f, s in zip(found, symbols)]
        canon = [f or strip_version(n) for f, n in zip(found, names)]
        mapped = sum(f is not None for f in found)
        files.append((path, X, canon))
        log(f"{path}: {X.shape[0]} cells x {X.shape[1]} genes, {mapped} mapped")
    vocab = SPECIALS + sorted(set(c for _, _, cs in files for c in cs) - set(SPECIALS))
    tok_of = {n: i for i, n in enumerate(vocab)}

    # Per file: positive values summed into token columns (duplicates summed).
    cells = []  # (tokens, normalised) per cell, over all files
    for path, X, canon in files:
        Xp = X.copy()
        Xp.data[Xp.data <= 0] = 0
        Xp.eliminate_zeros()
        totals = np.asarray(Xp.astype(np.float64).sum(axis=1)).ravel()
        col_tok = np.array([tok_of[c] for c in canon])
        M = sp.csr_matrix((np.ones(len(col_tok), np.float32), (np.arange(len(col_tok)), col_tok)),
                          shape=(len(col_tok), len(vocab)))
        T = (Xp @ M).tocsr()
        T.sort_indices()
        for r in range(T.shape[0]):
            a, b = T.indptr[r], T.indptr[r + 1]
            if b == a:
                continue  # empty cell: skipped
            toks = T.indices[a:b]
            vals = T.data[a:b].astype(np.float64) * 1e4 / totals[r]
            cells.append((toks, vals))
    # Medians of normalised non-zero values per token.
    all_t = np.concatenate([t for t, _ in cells])
    all_v = np.concatenate([v for _, v in cells])
    order = np.argsort(all_t, kind="stable")
    all_t, all_v = all_t[order], all_v[order]
    medians = np.zeros(len(vocab))
    bounds = np.searchsorted(all_t, np.arange(len(vocab) + 1))
    for t in range(len(SPECIALS), len(vocab)):
        if bounds[t + 1] > bounds[t]:
            medians[t] = np.median(all_v[bounds[t]:bounds[t + 1]])
    # Rank tokenization.
    tokens = []
    for toks, vals in cells:
        med = medians[toks]
        score = vals / np.where(med > 0, med, 1.0)
        idx = np.lexsort((toks, -score))[: max_len - 1]
        tokens.append(np.concatenate([[CLS], toks[idx]]).astype(np.int32))
    return vocab, medians, tokens


def token_digest(tokens):
    # sum over cells c, positions p of token * (c * 1000003 + p + 1), mod 2^61 - 1
    m, d = (1 << 61) - 1, 0
    for c, t in enumerate(tokens):
        w = c * 1000003 + np.arange(1, len(t) + 1, dtype=np.int64)
        d = (d + int((t.astype(np.int64) * w).sum())) % m
    return d


def make_batches(tokens, vocab_size, batch_size, seed=0, mask_prob=0.15):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tokens))
    batches = []
    for s in range(0, len(order), batch_size):
        cells = [tokens[i] for i in order[s:s + batch_size]]
        L = max(len(c) for c in cells)
        tok = np.full((len(cells), L), PAD, np.int32)
        for i, c in enumerate(cells):
            tok[i, :len(c)] = c
        labels = np.full_like(tok, -100)
        for i, c in enumerate(cells):
            g = len(c) - 1
            k = max(1, int(round(mask_prob * g)))
            pos = 1 + rng.choice(g, k, replace=False)
            labels[i, pos] = tok[i, pos]
            u = rng.random(k)
            tok[i, pos[u < 0.8]] = MASK
            rnd = pos[(u >= 0.8) & (u < 0.9)]
            tok[i, rnd] = rng.integers(len(SPECIALS), vocab_size, len(rnd))
        batches.append((tok, labels, np.array([len(c) for c in cells])))
    return batches


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="FILE or FILE:MATRIX (X, raw/X, layers/NAME)")
    p.add_argument("--genes", default="data/genes/human_genes.tsv", help="gene table ('' for none)")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--cells", default="", help="print these cells' tokens (comma-separated indices)")
    p.add_argument("--top", type=int, default=0, help="with --cells: first N gene tokens only")
    p.add_argument("--batches", action="store_true", help="also build padded masked batches")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON summary (with timing)")
    p.add_argument("--digest", action="store_true", help="print a checksum of all cells' tokens (tests compare it)")
    args = p.parse_args()
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    t0 = time.perf_counter()
    vocab, medians, tokens = prepare(args.files, args.genes, args.max_len, log)
    n_batches = 0
    if args.batches:
        n_batches = len(make_batches(tokens, len(vocab), args.batch_size))
    secs = time.perf_counter() - t0
    lens = np.array([len(t) for t in tokens])
    if args.digest:
        print("digest", token_digest(tokens))
    if args.cells:
        for c in [int(x) for x in args.cells.split(",")]:
            names = [vocab[t] for t in tokens[c][1:]]
            print(c, " ".join(names[: args.top] if args.top else names))
    if args.json:
        print(json.dumps({"n_cells": len(tokens), "n_genes": len(vocab) - len(SPECIALS), "tokens_mean": float(lens.mean()),
                          "tokens_max": int(lens.max()), "tokens_total": int(lens.sum()), "batches": n_batches,
                          "seconds": secs, "cells_per_s": len(tokens) / secs, "tokens_per_s": float(lens.sum()) / secs}))
    else:
        log(f"{len(tokens)} cells, {len(vocab) - len(SPECIALS)} genes, tokens mean {lens.mean():.3f} max {lens.max()}, "
            f"{secs:.3f} s ({len(tokens) / secs:.0f} cells/s, {lens.sum() / secs:.0f} tokens/s)")


if __name__ == "__main__":
    main()
