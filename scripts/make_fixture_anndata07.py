#!/usr/bin/env python3
"""Writes tests/fixtures/pbmc68k_anndata07.h5ad with a real anndata 0.7.8 (the project's real 0.7
file has no categoricals): the first 50 cells of data/pbmc68k_reduced.h5ad with its cell_type and
phase categoricals, which anndata 0.7 stores as codes whose `categories` attribute is an object
reference into `__categories/<column>`.
Usage: python3 scripts/make_fixture_anndata07.py   (in a venv with anndata==0.7.8, pandas<1.6,
numpy<1.24, h5py==3.8.0, scipy<1.11)
"""
import os

import anndata as ad
import h5py

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with h5py.File(os.path.join(root, "data", "pbmc68k_reduced.h5ad"), "r") as f:
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    g = f["X"]
    x = sp.csr_matrix((g["data"][...], g["indices"][...], g["indptr"][...]), shape=tuple(g.attrs["shape"]))[:50]
    obs_names = [s.decode() if isinstance(s, bytes) else s for s in f["obs/index"][:50]]
    var_names = [s.decode() if isinstance(s, bytes) else s for s in f["var/index"][...]]
    def cat(col):
        codes = f[f"obs/{col}/codes"][:50]
        cats = [s.decode() if isinstance(s, bytes) else s for s in f[f"obs/{col}/categories"][...]]
        return pd.Categorical.from_codes(codes, cats)
    obs = pd.DataFrame({"cell_type": cat("cell_type"), "phase": cat("phase"),
                        "n_genes": f["obs/n_genes"][:50]}, index=obs_names)
a = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=var_names))
out = os.path.join(root, "tests", "fixtures", "pbmc68k_anndata07.h5ad")
a.write_h5ad(out)
print("wrote", out, os.path.getsize(out), "bytes with anndata", ad.__version__)
