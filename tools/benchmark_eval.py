"""Benchmark: exact blockwise evaluation (features in) vs fast-reid's compiled and pure-Python rankings.

Synthetic clustered features (ids with ~27 images each as in MSMT17, 15 cameras), same run, same threads.
Ours is timed from features to metrics (distances included). The references need the dense (Q, G) matrix:
it is computed once with fast-reid's ``build_dist`` (torch) and its time is added to each reference.
fast-reid's compiled ranking is built from its .pyx into a temporary dir (skipped, and said so, without
Cython / a C compiler). The pure-Python fallback is timed on the first ``--python-queries`` queries and
extrapolated linearly to all queries (its cost is per query), which the table says.

Peak extra memory of ours: Linux peak RSS (VmHWM, reset through /proc/self/clear_refs right before the call)
minus the RSS before the call; this counts torch/numpy native buffers, which tracemalloc cannot see.

    python tools/benchmark_eval.py --queries 3368 --gallery 15913 --dim 768
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

import plugins  # noqa: E402,F401  (host-compat patches before fastreid)
from fastreid.evaluation.rank import eval_market1501  # noqa: E402
from fastreid.utils.compute_dist import build_dist  # noqa: E402
from plugins.evaluation import evaluate_features  # noqa: E402
from plugins.evaluation.reference import build_compiled_ranking  # noqa: E402


def synthetic(num_q: int, num_g: int, dim: int, seed: int, per_id: int = 27, num_cams: int = 15):
    """Clustered features: ids with ~per_id gallery images, a shared per-camera offset (same-camera
    non-matches look closer, as in real ReID), queries drawn from the gallery ids; ~65% mAP at 768-d."""
    gen = torch.Generator().manual_seed(seed)
    num_ids = max(2, num_g // per_id)
    centres = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=gen), dim=1)
    cam_centres = torch.nn.functional.normalize(torch.randn(num_cams, dim, generator=gen), dim=1)
    g_pids = torch.randint(0, num_ids, (num_g,), generator=gen)
    q_pids = torch.randint(0, num_ids, (num_q,), generator=gen)
    q_cams = torch.randint(0, num_cams, (num_q,), generator=gen)
    g_cams = torch.randint(0, num_cams, (num_g,), generator=gen)

    def feats(pids, cams):
        out = torch.empty(len(pids), dim)
        for s in range(0, len(pids), 8192):                     # chunks: no big temporaries
            p, c = pids[s:s + 8192], cams[s:s + 8192]
            out[s:s + 8192] = centres[p] + 0.5 * cam_centres[c] + 0.095 * torch.randn(len(p), dim, generator=gen)
        return out

    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids.numpy(), g_pids.numpy(), q_cams.numpy(), g_cams.numpy()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak_extra(fn):
    """(result, seconds, peak extra GB) of fn(); peak = VmHWM after a reset minus VmRSS before."""
    Path("/proc/self/clear_refs").write_text("5")               # reset the peak-RSS watermark
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    return out, secs, (_status_kb("VmHWM") - base) / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, required=True)
    ap.add_argument("--gallery", type=int, required=True)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (numpy/Cython ranking is 1 thread)")
    ap.add_argument("--python-queries", type=int, default=100, help="queries timed for the Python fallback")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}, torch threads: {args.threads}", flush=True)

    q, g, q_pids, g_pids, q_cams, g_cams = synthetic(args.queries, args.gallery, args.dim, args.seed)
    ours, t_ours, mem_ours = measure_peak_extra(lambda: evaluate_features(
        q, g, q_pids, g_pids, q_cams, g_cams, metric="cosine", block_size=args.block_size, progress=True))
    print(f"ours: {t_ours:.1f} s, peak extra {mem_ours:.3f} GB", flush=True)

    t0 = time.perf_counter()
    dist = build_dist(q, g, "cosine")                            # fast-reid's dense path, as ReidEvaluator
    t_dist = time.perf_counter() - t0
    print(f"dense distance matrix: {t_dist:.1f} s, {dist.nbytes / 1024 ** 3:.2f} GB", flush=True)

    rows = [["ours (blockwise, features in)", f"{t_ours:.1f}", "measured", f"{mem_ours:.3f}"]]
    compiled, t_cy, speedup = None, None, float("nan")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rank_cy = build_compiled_ranking(tmp)
            t0 = time.perf_counter()
            compiled = rank_cy.evaluate_cy(dist, q_pids, g_pids, q_cams, g_cams, 50, False)
            t_cy = time.perf_counter() - t0
        speedup = (t_dist + t_cy) / t_ours
        rows.append(["fast-reid compiled (dense dist + rank_cy)", f"{t_dist + t_cy:.1f}",
                     f"dist {t_dist:.1f} + rank {t_cy:.1f}", f">= {dist.nbytes * 3 / 1024 ** 3:.2f} (dist + int64 argsort)"])
    except RuntimeError as exc:
        print(f"fast-reid's compiled ranking could not be built here: {str(exc)[:300]}")
        rows.append(["fast-reid compiled", "n/a", "Cython or a C compiler missing", ""])

    n_py = min(args.python_queries, args.queries)
    t0 = time.perf_counter()
    try:
        eval_market1501(dist[:n_py], q_pids[:n_py], g_pids, q_cams[:n_py], g_cams, 50)
        t_py = (time.perf_counter() - t0) * args.queries / n_py
        how = f"dist {t_dist:.1f} + rank EXTRAPOLATED from {n_py} queries" if n_py < args.queries else "measured"
        rows.append(["fast-reid pure Python (dense dist + fallback)", f"{t_dist + t_py:.1f}", how, ""])
    except (AssertionError, ValueError) as exc:
        rows.append(["fast-reid pure Python", "failed", str(exc)[:60], ""])

    identical = False
    if compiled is not None:
        cmc_same = np.array_equal(compiled[0], ours.cmc)
        n_same = len(compiled[1]) == len(ours.all_AP)
        d_map = abs(float(np.mean(compiled[1])) - ours.mAP)
        d_inp = abs(float(np.mean(compiled[2])) - ours.mINP)
        d_ap = float(np.abs(np.asarray(compiled[1], np.float64) - ours.all_AP).max()) if n_same else float("inf")
        identical = bool(cmc_same and n_same and d_map <= 1e-6 and d_inp <= 1e-6)
        print(f"vs compiled: CMC identical={cmc_same}, valid queries {len(ours.all_AP)} / {len(compiled[1])}, "
              f"|dmAP|={d_map:.2e}, |dmINP|={d_inp:.2e}, max per-query |dAP|={d_ap:.2e}")
    print(f"ours: Rank-1 {ours.cmc[0] * 100:.2f}  mAP {ours.mAP * 100:.2f}  mINP {ours.mINP * 100:.2f}  "
          f"skipped queries {ours.num_skipped}")
    print(tabulate(rows, headers=["method", "seconds", "how", "peak extra GB"], tablefmt="github"))
    print(f"load average after: {os.getloadavg()}")
    print(f"eval Q={args.queries} G={args.gallery} speedup_vs_compiled={speedup:.2f} "
          f"peak_extra_mem_gb={mem_ours:.3f} identical={identical}")


if __name__ == "__main__":
    main()
