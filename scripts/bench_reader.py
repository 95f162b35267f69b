#!/usr/bin/env python3
"""Reading speed of sctrain's h5ad reader vs anndata's backed mode, on the same file, in one run.

Builds (once) a large CSR .h5ad as anndata writes it: --cells cells resampled from the real
data/pbmc3k_seurat.h5ad (13,714 genes, UMI counts), uncompressed (anndata's default) and
optionally gzip. Then, for each reader and mode, runs one fresh process and reports cells/s, MB/s
(values + indices read) and peak RSS:
  sequential: consecutive batches of --seq-batch cells over the whole file
  random:     --batches batches of --batch cells drawn uniformly (sorted, as backed anndata needs)
"At start" is each process's resident memory before it opens the file (sctrain's includes the
LibTorch libraries it is linked with; anndata's the Python imports): the reading costs the difference.

Usage: $(scripts/setup_peers.sh) scripts/bench_reader.py --sctrain build/sctrain [--cells 200000] [--gzip]
Needs anndata, numpy, scipy in the running Python (scripts/setup_peers.sh installs them).
"""
import argparse
import json
import os
import subprocess
import sys
import time

PEER = r"""
import json, sys, time
import numpy as np
import anndata as ad
path, mode, batch, batches, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def peak_mb():  # VmHWM: ru_maxrss would carry the parent's peak over exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
before = peak_mb()
a = ad.read_h5ad(path, backed="r")
X = a.X
n = a.n_obs
cells = entries = 0
t0 = time.perf_counter()
if mode == "sequential":
    for b in range(0, n, batch):
        m = X[b:min(n, b + batch)]
        cells += m.shape[0]; entries += m.nnz
else:
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        rows = np.sort(rng.integers(0, n, batch))
        m = X[rows]
        cells += m.shape[0]; entries += m.nnz
secs = time.perf_counter() - t0
peak = peak_mb()
print(json.dumps({"reader": "anndata-backed", "mode": mode, "batch": batch, "cells": cells, "entries": entries,
                  "seconds": secs, "cells_per_s": cells / secs, "mb_per_s": entries * 8 / 1e6 / secs,
                  "peak_rss_mb": peak, "rss_before_mb": before}))
"""


def make_file(path, cells, compression):
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = ad.read_h5ad(os.path.join(root, "data", "pbmc3k_seurat.h5ad"))
    x = src.X.tocsr()
    rows = np.random.default_rng(0).integers(0, x.shape[0], cells)
    big = x[rows]
    a = ad.AnnData(X=big, var=src.var[[]])
    a.obs_names = [f"cell{i}" for i in range(cells)]
    t = time.time()
    a.write_h5ad(path, compression=compression)
    print(f"wrote {path}: {cells} x {x.shape[1]}, nnz {big.nnz}, {os.path.getsize(path) / 1e9:.2f} GB, "
          f"compression={compression}, anndata {ad.__version__}, {time.time() - t:.0f} s", flush=True)


def warm(path):
    """Reads the file once so both readers find it in the page cache (the first would pay otherwise)."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sctrain", default="build/sctrain")
    p.add_argument("--dir", default="/tmp/sctrain_bench")
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq-batch", type=int, default=1024)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--gzip", action="store_true", help="also a gzip-compressed copy")
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    files = [(None, os.path.join(a.dir, f"resampled_{a.cells}.h5ad"))]
    if a.gzip:
        files.append(("gzip", os.path.join(a.dir, f"resampled_{a.cells}_gzip.h5ad")))
    rows = []
    for comp, path in files:
        if not os.path.exists(path):
            make_file(path, a.cells, comp)
        for mode, batch in (("sequential", a.seq_batch), ("random", a.batch)):
            warm(path)
            ours = run([a.sctrain, "bench", "read", path, "--mode", mode, "--batch", str(batch),
                        "--batches", str(a.batches), "--json"])
            warm(path)
            peer = run([sys.executable, "-c", PEER, path, mode, str(batch), str(a.batches), "0"])
            rows.append((comp or "none", mode, batch, ours, peer))
    print("\n| file | mode | batch | sctrain cells/s | anndata cells/s | ratio | sctrain MB/s | anndata MB/s "
          "| sctrain peak RSS MB (at start) | anndata peak RSS MB (at start) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for comp, mode, batch, o, q in rows:
        print(f"| {a.cells} cells, compression {comp} | {mode} | {batch} | {o['cells_per_s']:,.0f} | "
              f"{q['cells_per_s']:,.0f} | **{o['cells_per_s'] / q['cells_per_s']:.1f}x** | {o['mb_per_s']:,.0f} | "
              f"{q['mb_per_s']:,.0f} | {o['peak_rss_mb']:.0f} ({o['rss_before_mb']:.0f}) | "
              f"{q['peak_rss_mb']:.0f} ({q['rss_before_mb']:.0f}) |")


if __name__ == "__main__":
    main()
