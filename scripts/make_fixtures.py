#!/usr/bin/env python3
"""Writes tests/fixtures/*.h5ad: cases the real files in data/ lack, made from real data with anndata.

pbmc68k_csc_int64.h5ad (from data/pbmc68k_reduced.h5ad, first 120 cells):
  X CSC float64 with int64 indices/indptr, lzf-compressed; layers/counts_int32 dense int32;
  layers/counts_csr_uint16 CSR uint16; obs with nullable-integer, nullable-boolean,
  nullable-string-array (note), ordered categorical with missing codes, bool; raw with its own var, whose index is a nullable-string-array.
Usage: python3 scripts/make_fixtures.py   (needs anndata >= 0.11, pandas, scipy)
"""
import os

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
src = ad.read_h5ad(os.path.join(root, "data", "pbmc68k_reduced.h5ad"))[:120].copy()
counts = src.X.tocsr().astype(np.float64)

x = counts.tocsc()
x.indices = x.indices.astype(np.int64)
x.indptr = x.indptr.astype(np.int64)

n = counts.shape[0]
rng = np.random.default_rng(0)
obs = pd.DataFrame(index=pd.Index(src.obs_names.astype(str), name="cell"))
obs["n_genes_nullable"] = pd.array([int(v) if i % 7 else None for i, v in enumerate(np.diff(counts.indptr))],
                                   dtype="Int64")
obs["is_monocyte"] = pd.array([("Mono" in str(c)) if i % 5 else None for i, c in enumerate(src.obs["cell_type"])],
                              dtype="boolean")
obs["donor"] = pd.array([f"donor{i % 3}" if i % 11 else None for i in range(n)], dtype="string")
# unique values, so anndata keeps it a (nullable) string column rather than a categorical
obs["note"] = pd.array([f"note{i}" if i % 4 else None for i in range(n)], dtype="string")
phase = pd.Categorical(src.obs["phase"].astype(str), categories=["G1", "S", "G2M"], ordered=True)
phase[::9] = np.nan
obs["phase"] = phase
obs["high_counts"] = np.asarray(counts.sum(1)).ravel() > 1000

a = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=src.var_names.astype(str)))
a.layers["counts_int32"] = counts.toarray().astype(np.int32)
a.layers["counts_csr_uint16"] = counts.astype(np.uint16)
a.raw = ad.AnnData(X=counts.astype(np.float32), var=pd.DataFrame(index=[f"raw_{g}" for g in src.var_names]))
ad.settings.allow_write_nullable_strings = True
out = os.path.join(root, "tests", "fixtures", "pbmc68k_csc_int64.h5ad")
a.write_h5ad(out, compression="lzf")

# pandas-3-era files write the index as nullable-string-array (values + mask): rewrite raw/var's
# index that way, as newer anndata does.
import h5py
with h5py.File(out, "r+") as f:
    names = f["raw/var/_index"][...]
    del f["raw/var/_index"]
    g = f["raw/var"].create_group("_index")
    g.attrs["encoding-type"] = "nullable-string-array"
    g.attrs["encoding-version"] = "0.1.0"
    g.create_dataset("values", data=names, dtype=h5py.string_dtype())
    g.create_dataset("mask", data=np.zeros(len(names), dtype=bool))
    # anndata 0.12 turned obs/note into a categorical; store it as the nullable string column it is.
    note = obs["note"]
    del f["obs/note"]
    g = f["obs"].create_group("note")
    g.attrs["encoding-type"] = "nullable-string-array"
    g.attrs["encoding-version"] = "0.1.0"
    g.create_dataset("values", data=[v if isinstance(v, str) else "" for v in note], dtype=h5py.string_dtype())
    g.create_dataset("mask", data=note.isna().to_numpy())
