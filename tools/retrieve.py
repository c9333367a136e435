#!/usr/bin/env python
"""Search a gallery with a trained model: by an image, a folder of images, or (text-image models) a sentence.

    python tools/retrieve.py --config-file CFG --weights W --gallery DIR --query IMAGE|DIR|"sentence" \
        [--topk 10] --out OUT [--search exact|flat|ivf|hnsw] [--rerank] [--device cuda] [--amp] [KEY VALUE ...]
    python tools/retrieve.py --config-file CFG --weights W --dataset Market1501 [--worst|--best|--random] \
        [--num 8] --out OUT

``--gallery``: a folder in any layout (searched recursively; ids and cameras come from Market/Duke/VeRi/MSMT
style file names when they carry them). ``--dataset NAME``: a registered reader's gallery and query set under
``$FASTREID_DATASETS`` (their extras, e.g. modalities and attributes, reach the model); without ``--query`` its own
queries are searched and ``--worst`` / ``--best`` / ``--random`` pick ``--num`` of them by their AP.

The gallery's features are kept in ``OUT/gallery.safetensors`` (or ``--index``): re-running after adding images
embeds only the new ones. Writes ``OUT/ranking.csv`` (query, rank, score, path, id) and ``OUT/ranking.png``; the
last line printed is ``retrieve queries=<n> gallery=<m> seconds=<s>``.
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
import torch

import plugins  # noqa: F401  (host-compat patches + registrations)
from plugins.config import import_methods, setup_cfg
from plugins.engine.loaders import dataset_items
from plugins.evaluation import evaluate_features
from plugins.inference.figures import ranking_figure
from plugins.inference.gallery_index import (IMAGE_EXTENSIONS, list_image_items, model_fingerprint,
                                             parse_market_name, update_index)
from plugins.inference.predictor import Predictor
from plugins.inference.search import (FAISS_KINDS, exact_topk, faiss_topk, recall_at_k, rerank_distances,
                                      topk_from_distances)

FIGURE_ROWS = 20  # queries drawn in ranking.png at most (the CSV holds every query)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default=None, help="checkpoint; default MODEL.WEIGHTS")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gallery", help="folder of gallery images (any layout)")
    src.add_argument("--dataset", help="registered dataset name: its gallery (and query set)")
    p.add_argument("--query", default=None, help="an image, a folder of images, or a sentence (text-image models)")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--out", required=True)
    p.add_argument("--index", default=None, help="gallery feature file (default OUT/gallery.safetensors)")
    p.add_argument("--search", default="exact", choices=("exact",) + FAISS_KINDS,
                   help="exact blockwise search, or a faiss index (flat is exact; ivf/hnsw print their recall)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (TEST.RERANK.K1/K2/LAMBDA)")
    pick = p.add_mutually_exclusive_group()
    for name in ("worst", "best", "random"):
        pick.add_argument(f"--{name}", dest="select", action="store_const", const=name,
                          help=f"--dataset without --query: the {name} queries by AP")
    p.add_argument("--num", type=int, default=8, help="queries picked by --worst/--best/--random")
    p.add_argument("--seed", type=int, default=0, help="for --random")
    p.add_argument("--device", default=None)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def query_kind(query: str) -> str:
    if os.path.isdir(query):
        return "folder"
    if os.path.isfile(query):
        return "image"
    if query.lower().endswith(IMAGE_EXTENSIONS) and len(query.split()) == 1:
        raise FileNotFoundError(f"--query '{query}' looks like an image path but does not exist")
    return "text"


def select_queries(ap: np.ndarray, valid: np.ndarray, how: str, num: int, seed: int) -> np.ndarray:
    """Positions in ``valid`` (queries with a match) of the ``num`` worst / best / random by AP."""
    if how == "random":
        return np.sort(np.random.default_rng(seed).permutation(valid.size)[:num])
    order = np.argsort(ap, kind="stable")
    return order[:num] if how == "worst" else order[::-1][:num]


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    import_methods()
    cfg = setup_cfg(args.config_file, args.opts)
    predictor = Predictor(cfg, args.weights, device=args.device, amp=args.amp, batch_size=args.batch_size)
    metric = str(cfg.TEST.METRIC)
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"TEST.METRIC {metric!r}: retrieval ranks by cosine or euclidean")
    os.makedirs(args.out, exist_ok=True)

    if args.dataset:
        g_items = dataset_items([args.dataset], "gallery")
    else:
        g_items = list_image_items(args.gallery)
    index_path = args.index or os.path.join(args.out, "gallery.safetensors")
    gallery = update_index(g_items, predictor.embed_items, index_path,
                           model_fingerprint(predictor.cfg, predictor.cfg.MODEL.WEIGHTS))
    print(f"gallery: {len(gallery)} images, {gallery.embedded} embedded, index {index_path}")

    q_paths = q_texts = None
    q_pids = q_camids = None
    titles = None
    if args.query is None:
        if not args.dataset:
            raise ValueError("--query is required with --gallery")
        q_items = dataset_items([args.dataset], "query")
        q_feats = predictor.embed_items(q_items)
        q_pids = np.array([it[1] for it in q_items])
        q_camids = np.array([it[2] for it in q_items])
        res = evaluate_features(q_feats, gallery.features, q_pids, np.array(gallery.pids), q_camids,
                                np.array(gallery.camids), metric=metric, progress=False)
        picked = select_queries(res.all_AP, res.valid_query, args.select or "random", args.num, args.seed)
        rows = res.valid_query[picked]
        print(f"{args.dataset}: mAP {res.mAP:.2%} over {res.valid_query.size} queries; "
              f"{args.select or 'random'} {rows.size} shown (AP of the exact ranking"
              f"{', before re-ranking' if args.rerank else ''})")
        q_feats, q_pids, q_camids = q_feats[rows], q_pids[rows], q_camids[rows]
        q_paths = [q_items[r][0] for r in rows]
        titles = [f"{os.path.basename(p)}  AP {ap:.1%}" for p, ap in zip(q_paths, res.all_AP[picked])]
    elif query_kind(args.query) == "text":
        q_texts = [args.query]
        q_feats = predictor.embed_text(q_texts)
        if q_feats.shape[1] != gallery.features.shape[1]:
            raise ValueError(f"text features are {q_feats.shape[1]}-d but this model's image features are "
                             f"{gallery.features.shape[1]}-d: {cfg.MODEL.META_ARCHITECTURE}'s eval image feature is "
                             f"not in its text space (e.g. CLIP-ReID concatenates CLS and projection); text queries "
                             f"need a text-image model (DM-Adapter)")
        metric = "cosine"  # text-image models rank by cosine similarity (the text protocol)
    else:
        q_items = ([(args.query, *parse_market_name(args.query))] if query_kind(args.query) == "image"
                   else list_image_items(args.query))
        q_paths = [it[0] for it in q_items]
        q_feats = predictor.embed_items(q_items)
        q_pids = np.array([it[1] for it in q_items])

    g_pids = np.array(gallery.pids)
    protocol = {} if q_camids is None else dict(q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                                                g_camids=np.array(gallery.camids))
    if args.rerank:
        rr = cfg.TEST.RERANK
        dist = rerank_distances(q_feats, gallery.features, k1=int(rr.K1), k2=int(rr.K2),
                                lambda_value=float(rr.LAMBDA), metric=metric)
        removed = None
        if protocol:
            removed = torch.from_numpy((q_pids[:, None] == g_pids[None]) &
                                       (q_camids[:, None] == protocol["g_camids"][None]))
        ranking = topk_from_distances(dist, args.topk, metric, removed)
    elif args.search == "exact":
        ranking = exact_topk(q_feats, gallery.features, args.topk, metric=metric, **protocol)
    else:
        if protocol:
            raise ValueError("--search faiss indexes ignore the protocol's same-camera removal: use --search "
                             "exact with --dataset")
        ranking = faiss_topk(q_feats, gallery.features, args.topk, metric=metric, kind=args.search)
        if args.search != "flat":
            exact = exact_topk(q_feats, gallery.features, args.topk, metric=metric)
            print(f"faiss {args.search} recall@{args.topk} vs exact: {recall_at_k(ranking, exact):.4f}")

    csv_path = os.path.join(args.out, "ranking.csv")
    names = q_paths if q_paths is not None else q_texts
    table = []
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "score", "path", "id"])
        for i, name in enumerate(names):
            for r, (g, s) in enumerate(zip(ranking.indices[i], ranking.scores[i])):
                if g < 0:
                    continue
                pid = int(g_pids[g])
                row = [name, r + 1, f"{s:.6f}", gallery.paths[g], pid if pid >= 0 else ""]
                writer.writerow(row)
                table.append(row)
    from tabulate import tabulate

    print(tabulate(table[: args.topk * 5], headers=["query", "rank", "score", "path", "id"]))
    n_fig = min(len(names), FIGURE_ROWS)
    sub = type(ranking)(ranking.indices[:n_fig], ranking.distances[:n_fig], ranking.metric)
    size = tuple(int(x) for x in cfg.INPUT.SIZE_TEST)
    ranking_figure(os.path.join(args.out, "ranking.png"), sub, gallery.paths,
                   query_paths=None if q_paths is None else q_paths[:n_fig],
                   query_texts=None if q_texts is None else q_texts[:n_fig],
                   query_pids=None if q_pids is None else q_pids[:n_fig], gallery_pids=g_pids,
                   titles=None if titles is None else titles[:n_fig], thumb_size=size)
    seconds = time.perf_counter() - start
    print(f"retrieve queries={len(names)} gallery={len(gallery)} seconds={seconds:.2f}")
    return {"ranking": ranking, "gallery": gallery, "queries": names, "csv": csv_path}


if __name__ == "__main__":
    main(sys.argv[1:])
