#!/usr/bin/env python3
"""Figures that anndata itself reads from each .h5ad file, for the reader tests (tests/io).

Usage: python3 scripts/anndata_figures.py FILE.h5ad...   (needs anndata, numpy, scipy)
Prints, per file: shape, per-matrix dtype/nnz/sum and chosen row sums and entries, obs/var columns.
"""
import sys
import warnings

import anndata as ad
import numpy as np
import scipy.sparse as sp

warnings.filterwarnings("ignore")


def dense_row(m, r):
    row = m[r]
    return np.asarray(row.todense()).ravel() if sp.issparse(row) else np.asarray(row).ravel()


def describe_matrix(name, m):
    n = m.shape[0]
    rows = [0, n // 2, n - 1]
    total = float(m.sum(dtype=np.float64)) if sp.issparse(m) else float(np.asarray(m, dtype=np.float64).sum())
    nnz = m.nnz if sp.issparse(m) else None
    print(f"  {name}: {type(m).__name__} {m.dtype} shape={m.shape} nnz={nnz} sum={total!r}")
    for r in rows:
        row = dense_row(m, r).astype(np.float64)
        nz = np.flatnonzero(row)
        picks = [(int(c), float(row[c])) for c in nz[:2]] + ([(int(nz[-1]), float(row[nz[-1]]))] if len(nz) else [])
        print(f"    row {r}: sum={row.sum()!r} nonzero={len(nz)} entries={picks}")


def describe_frame(name, df):
    print(f"  {name}: index={df.index[:2].tolist()}..{df.index[-1]!r} n={len(df)}")
    for c in df.columns:
        s = df[c]
        kind = "categorical" if str(s.dtype) == "category" else str(s.dtype)
        extra = f" n_categories={len(s.cat.categories)} first={s.iloc[0]!r} last={s.iloc[-1]!r}" if kind == "categorical" \
            else f" first={s.iloc[0]!r} last={s.iloc[-1]!r}"
        print(f"    {c}: {kind}{extra}")


for path in sys.argv[1:]:
    a = ad.read_h5ad(path)
    print(f"== {path} anndata {ad.__version__}: {a.n_obs} x {a.n_vars}")
    describe_matrix("X", a.X)
    if a.raw is not None:
        describe_matrix("raw/X", a.raw.X)
        print(f"  raw var_names: {a.raw.var_names[:2].tolist()}..{a.raw.var_names[-1]!r} n={a.raw.n_vars}")
    for k in a.layers:
        describe_matrix(f"layers/{k}", a.layers[k])
    describe_frame("obs", a.obs)
    describe_frame("var", a.var)
