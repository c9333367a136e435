#!/usr/bin/env python
"""Benchmark: sparse exact Jaccard distance + DBSCAN vs fast-reid's dense ``compute_jaccard_distance``.

    python tools/benchmark_jaccard.py --n 12936 [--dim 768] [--k1 30] [--k2 6] [--eps 0.6] [--threads 2]

Features: Gaussian identity clusters on the unit sphere (cluster sizes drawn like ReID training sets, a few
camera-like sub-modes per identity, 5% unclustered images), seeded. Each implementation runs in its own
subprocess limited to ``--threads`` BLAS/OpenMP/torch threads, one after the other, on the same features.

Memory method: each subprocess resets its peak-RSS counter (Linux ``/proc/self/clear_refs`` = 5) right
before the measured call and reads ``VmHWM`` right after; the reported peak is that high-water mark minus
the resident size just before the call (interpreter, torch, faiss and the input features, identical for
both). A sampling thread could miss short peaks; ru_maxrss cannot be reset between the Jaccard and the
DBSCAN step. The reference is skipped up front, reported "not runnable", when its dense matrices (about
9 N^2 bytes: V and its query expansion, then V and the distance plus a boolean mask) exceed the memory
available now.

Last line: ``jaccard N=<n> speedup=<x> peak_mem_ratio=<y> labels_identical=<True|False>`` with speedup =
reference Jaccard time / ours and peak_mem_ratio = our Jaccard peak / reference's (``nan`` / ``n/a`` when the
reference cannot run).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_features(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 unit vectors: identities with 2-8 camera modes each, ~5% unclustered images."""
    rng = np.random.default_rng(seed)
    n_noise = n // 20
    sizes = []
    while sum(sizes) < n - n_noise:
        sizes.append(int(np.clip(rng.lognormal(np.log(18), 0.6), 4, 150)))
    sizes[-1] -= sum(sizes) - (n - n_noise)
    feats = []
    for size in sizes:
        if size <= 0:
            continue
        center = rng.standard_normal(dim)
        modes = center + 0.6 * rng.standard_normal((rng.integers(2, 9), dim))
        which = rng.integers(0, len(modes), size)
        feats.append(modes[which] + 0.9 * rng.standard_normal((size, dim)))
    feats.append(rng.standard_normal((n_noise, dim)) * 1.5)
    x = np.concatenate(feats)[rng.permutation(n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(fn):
    """(result, seconds, peak bytes above the resident size at the call)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, (_status_kb("VmHWM") - base) * 1024


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import plugins  # noqa: F401  (host-compat patches before importing fastreid)
    import faiss
    import scipy.sparse as sp

    faiss.omp_set_num_threads(args.threads)
    from plugins.clustering import compute_jaccard_distance, dbscan_labels

    feats = torch.from_numpy(np.load(args.features))
    out = Path(args.out)
    stats = {}
    if args.worker == "ours":
        dist, stats["jaccard_s"], stats["jaccard_peak"] = _measure(
            lambda: compute_jaccard_distance(feats, k1=args.k1, k2=args.k2, search_option=3, progress=False))
        labels, stats["dbscan_s"], stats["dbscan_peak"] = _measure(
            lambda: dbscan_labels(dist, eps=args.eps, min_samples=args.min_samples, n_jobs=args.threads))
        stats["nnz"] = int(dist.nnz)
        if args.save_sparse:
            sp.save_npz(out / "ours_dist.npz", dist)
    else:
        from fastreid.utils.compute_dist import compute_jaccard_distance as reference
        from sklearn.cluster import DBSCAN

        dist, stats["jaccard_s"], stats["jaccard_peak"] = _measure(
            lambda: reference(feats, k1=args.k1, k2=args.k2, search_option=3))
        labels, stats["dbscan_s"], stats["dbscan_peak"] = _measure(
            lambda: DBSCAN(eps=args.eps, min_samples=args.min_samples, metric="precomputed",
                           n_jobs=args.threads).fit_predict(dist))
        ours_path = out / "ours_dist.npz"
        if ours_path.exists():  # exactness check after the timed part: stored values and the implicit 1s
            ours = sp.load_npz(ours_path).tocoo()
            stats["max_abs_diff_stored"] = float(np.abs(dist[ours.row, ours.col] - ours.data).max())
            stats["ref_pairs_below_1"] = int((dist < 1).sum())
            stats["ours_stored"] = int(ours.nnz)
    np.save(out / f"{args.worker}_labels.npy", labels)
    (out / f"{args.worker}_stats.json").write_text(json.dumps(stats))


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def run_worker(kind: str, args, tmp: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--features", str(tmp / "f.npy"),
           "--out", str(tmp), "--n", str(args.n), "--k1", str(args.k1), "--k2", str(args.k2), "--eps",
           str(args.eps), "--min-samples", str(args.min_samples), "--threads", str(args.threads)]
    if args.save_sparse:
        cmd.append("--save-sparse")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO_ROOT)
    stats = json.loads((tmp / f"{kind}_stats.json").read_text())
    stats["process_s"] = time.perf_counter() - t0
    stats["labels"] = np.load(tmp / f"{kind}_labels.npy")
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True, help="number of images (features)")
    p.add_argument("--dim", type=int, default=768, help="feature dimension")
    p.add_argument("--k1", type=int, default=30)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--eps", type=float, default=0.6, help="DBSCAN eps")
    p.add_argument("--min-samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads per implementation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-reference", action="store_true", help="run only the sparse implementation")
    p.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--save-sparse", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from tabulate import tabulate

    ref_estimate = 9 * args.n ** 2
    ref_runnable = not args.skip_reference and ref_estimate < 0.9 * mem_available()
    args.save_sparse = ref_runnable
    with tempfile.TemporaryDirectory(prefix="bench_jaccard_") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "f.npy", make_features(args.n, args.dim, args.seed))
        ours = run_worker("ours", args, tmp)
        ref = run_worker("reference", args, tmp) if ref_runnable else None

    gb = 1024 ** 3
    rows = []
    for name, s in (("sparse (ours)", ours), ("fast-reid dense", ref)):
        if s is None:
            why = "skipped" if args.skip_reference else f"not runnable: needs ~{ref_estimate / gb:.0f} GB"
            rows.append([name, why, "", "", "", "", ""])
            continue
        lab = s["labels"]
        rows.append([name, f"{s['jaccard_s']:.1f}", f"{s['jaccard_peak'] / gb:.2f}", f"{s['dbscan_s']:.1f}",
                     f"{s['dbscan_peak'] / gb:.2f}", int(lab.max() + 1), int((lab == -1).sum())])
    print(tabulate(rows, headers=["implementation", "jaccard s", "jaccard peak GB", "dbscan s",
                                  "dbscan peak GB", "clusters", "outliers"]))
    print(f"N={args.n} dim={args.dim} k1={args.k1} k2={args.k2} eps={args.eps} threads={args.threads} "
          f"stored pairs={ours['nnz']} ({ours['nnz'] / args.n:.1f}/row) load={os.getloadavg()[0]:.2f}")
    if ref is None:
        print(f"jaccard N={args.n} speedup=nan peak_mem_ratio=n/a labels_identical=n/a")
        return
    print(f"values: max |ours - reference| over stored pairs = {ref['max_abs_diff_stored']:.2e}; reference pairs "
          f"< 1: {ref['ref_pairs_below_1']}, ours stored: {ref['ours_stored']}")
    identical = bool(np.array_equal(ours["labels"], ref["labels"]))
    print(f"jaccard N={args.n} speedup={ref['jaccard_s'] / ours['jaccard_s']:.2f} "
          f"peak_mem_ratio={ours['jaccard_peak'] / ref['jaccard_peak']:.3f} labels_identical={identical}")


if __name__ == "__main__":
    main()
