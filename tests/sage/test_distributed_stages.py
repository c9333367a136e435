"""SAGE-reID stages 1 and 2 under torch.distributed: 2 CPU processes (gloo), a tiny ViT, synthetic data.

The source model is a short fast-reid run on SynthReIDA (single process) so that its features of the target
SynthReIDC form clusters (a random model puts every image in one). Stage 1 (``SAGEExpertTrainer``) and then
stage 2 (``SAGEGateTrainer``) run in one 2-process launch (every launch re-imports torch and fast-reid in each
process, the slowest part on 2 cores); each rank writes what it ended with and the tests compare the ranks with
each other and with single-process references computed here. Stage 2 merges two sources (the source model and a
noisy copy) and two experts (the stage-1 expert and a copy with perturbed lora_B): with identical experts every
gate logit would be equal for any w, so the gates would get no gradient.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fastreid.config import get_cfg
from plugins.compat.config_fixes import adjust_config_for_host
from plugins.config import add_plugins_config
from plugins.sage.config import add_sage_config

REPO = Path(__file__).resolve().parents[2]
EPS = 0.55  # DBSCAN eps on the Jaccard distance: ~20 target clusters from the short source run
TINY = [  # demo.yml shrunk: 1 block of width 32 (8x8 patches at 64x32 -> 33 tokens)
    "MODEL.BACKBONE.TIMM_VIT.DEPTH", 1, "MODEL.BACKBONE.TIMM_VIT.EMBED_DIM", 32,
    "MODEL.BACKBONE.TIMM_VIT.NUM_HEADS", 2, "MODEL.BACKBONE.FEAT_DIM", 32,
    "DATALOADER.NUM_WORKERS", 0, "TEST.IMS_PER_BATCH", 128, "SOLVER.WARMUP_ITERS", 0,
]
# One epoch of the unlabelled pool (288 images / 16 = 18 steps), P x K = 2 x 4 images per rank.
STAGE = ["SOLVER.MAX_EPOCH", 1, "SOLVER.IMS_PER_BATCH", 16, "DATALOADER.NUM_INSTANCE", 4,
         "SOLVER.CHECKPOINT_PERIOD", 1, "TEST.EVAL_PERIOD", 1, "MODEL.BACKBONE.PRETRAIN", False,
         "PLUGINS.PSEUDO_LABEL.EPS_MODE", "fixed", "PLUGINS.PSEUDO_LABEL.EPS", EPS]


def sage_cfg(out_dir, *opts):
    """configs/sage/demo.yml + the tiny model + ``opts``, built as tools/train_net.py builds it."""
    cfg = get_cfg()
    add_plugins_config(cfg)
    add_sage_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "sage" / "demo.yml"))
    cfg.merge_from_list(TINY + ["OUTPUT_DIR", str(out_dir)] + list(opts))
    adjust_config_for_host(cfg)
    cfg.freeze()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return cfg


def stage1_cfg(tmp: Path):
    return sage_cfg(tmp / "stage1", *STAGE, "PLUGINS.TRAINER", "SAGEExpertTrainer",
                    "MODEL.WEIGHTS", str(tmp / "source" / "model_final.pth"))


def stage2_cfg(tmp: Path):
    return sage_cfg(tmp / "stage2", *STAGE, "PLUGINS.TRAINER", "SAGEGateTrainer", "SOLVER.BASE_LR", 0.01,
                    "SAGE.SOURCE_WEIGHTS", (str(tmp / "source" / "model_final.pth"), str(tmp / "source2.safetensors")),
                    "SAGE.EXPERT_DIRS", (str(tmp / "stage1" / "expert"), str(tmp / "expert2")),
                    "SAGE.GATE.KIND", "sage")


def _seed(seed: int = 0):
    random.seed(seed)
    np.random.seed(seed)  # fast-reid's identity sampler draws its seed from numpy
    torch.manual_seed(seed)


def _train_source(tmp: Path):
    """Stage 0 on SynthReIDA (4 epochs, Adam 3e-3); a second 'source' = the same weights + small noise."""
    from fastreid.engine import DefaultTrainer

    _seed()
    cfg = sage_cfg(tmp / "source", "PLUGINS.TRAINER", "DefaultTrainer", "DATASETS.NAMES", ("SynthReIDA",),
                   "SOLVER.MAX_EPOCH", 4, "SOLVER.BASE_LR", 0.003, "SOLVER.CHECKPOINT_PERIOD", 4,
                   "TEST.EVAL_PERIOD", 4)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    gen = torch.Generator().manual_seed(1)
    state = {k: (v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v).contiguous()
             for k, v in trainer.model.state_dict().items()}
    save_file(state, str(tmp / "source2.safetensors"))


def _unwrapped(trainer):
    model = trainer.model
    return model.module if hasattr(model, "module") else model


def _hook(trainer):
    from plugins.engine.pseudo_label_hook import PseudoLabelHook

    return next(h for h in trainer._hooks if isinstance(h, PseudoLabelHook))


def _perturbed_copy(expert_dir: Path, out: Path):
    """A second expert: expert_dir with every lora_B replaced by B + noise of B's own scale."""
    import shutil

    from plugins.tuners.expert_bank import WEIGHTS_NAME

    shutil.copytree(expert_dir, out)
    tensors = load_file(str(out / WEIGHTS_NAME))
    gen = torch.Generator().manual_seed(2)
    for k, v in tensors.items():
        if "lora_B" in k:
            tensors[k] = (v + v.std() * torch.randn(v.shape, generator=gen)).contiguous()
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})


def _metrics(results) -> dict:
    return {k: float(v) for k, v in results.items() if isinstance(v, (int, float, np.floating))}


def _worker(tmp: str):
    """One rank: stage 1, then stage 2; writes per-rank LoRA / gate weights and pseudo-labels under ``tmp``."""
    from fastreid.utils import comm

    import plugins.sage.trainers as trainers  # also registers the SAGE trainers

    torch.set_num_threads(1)  # 2 processes on 2 cores: more threads only contend
    # DataLoader workers (fast-reid's test loader always has 4) are forked by the CPU launch patch, so they inherit
    # the host patches although pytest's __main__ does not import plugins: this test exercises that patch.
    tmp = Path(tmp)
    rank = comm.get_rank()
    _seed(rank)  # different on purpose: DDP must make the ranks agree anyway

    save = trainers.save_expert_with_neck

    def logged_save(model, directory):  # records which rank writes the expert folder
        with open(tmp / f"expert_written_by_rank{rank}.txt", "a") as f:
            f.write(directory + "\n")
        save(model, directory)

    trainers.save_expert_with_neck = logged_save

    trainer = trainers.SAGEExpertTrainer(stage1_cfg(tmp))
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    model = _unwrapped(trainer)
    np.save(tmp / f"s1_labels_rank{rank}.npy", _hook(trainer).last.labels)
    save_file({k: p.detach().contiguous() for k, p in model.named_parameters() if "lora_" in k},
              str(tmp / f"s1_lora_rank{rank}.safetensors"))
    if rank == 0:
        model.eval()
        with torch.no_grad():
            feats = model({"images": torch.load(tmp / "probe.pt")})
        torch.save(feats, tmp / "s1_probe_features.pt")
        with open(tmp / "s1_results.json", "w") as f:
            json.dump(_metrics(results), f)
        _perturbed_copy(tmp / "stage1" / "expert", tmp / "expert2")
    comm.synchronize()

    trainer = trainers.SAGEGateTrainer(stage2_cfg(tmp))
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    model = _unwrapped(trainer)
    np.save(tmp / f"s2_labels_rank{rank}.npy", _hook(trainer).last.labels)
    save_file({k: p.detach().contiguous() for k, p in model.named_parameters() if ".gate." in k},
              str(tmp / f"s2_gates_rank{rank}.safetensors"))
    if rank == 0:
        with open(tmp / "s2_results.json", "w") as f:
            json.dump(_metrics(results), f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Source model (single process) + stages 1 and 2 (2 gloo processes); returns the run folder."""
    from fastreid.engine import launch

    tmp = tmp_path_factory.mktemp("sage_dist")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTREID_DATASETS", str(tmp / "data"))  # generated on first use; the children inherit it
        torch.set_num_threads(1)  # several threads per process on 2 busy cores are ~10x slower here
        try:
            _train_source(tmp)
            torch.save(torch.rand(4, 3, 64, 32, generator=torch.Generator().manual_seed(3)) * 255, tmp / "probe.pt")
            launch(_worker, 2, dist_url="auto", args=(str(tmp),))
        finally:
            torch.set_num_threads(threads)
        yield tmp


@pytest.mark.slow
def test_stage1_expert_written_once_and_ranks_agree(run):
    from fastreid.data.datasets import DATASET_REGISTRY

    from plugins.engine.pseudo_label_hook import cluster_features, extract_features
    from plugins.sage.builders import build_expert_model, load_expert_model

    expert = run / "stage1" / "expert"
    assert sorted(p.name for p in expert.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "neck.safetensors"]
    # rank 0 alone writes the folder, once
    assert (run / "expert_written_by_rank0.txt").read_text().splitlines() == [str(expert)]
    assert not (run / "expert_written_by_rank1.txt").exists()

    # every rank ends with the same trained LoRA factors (B starts at 0: training moved it)
    lora0, lora1 = (load_file(str(run / f"s1_lora_rank{r}.safetensors")) for r in (0, 1))
    assert lora0.keys() == lora1.keys() and any("lora_B" in k for k in lora0)
    for k in lora0:  # all-reduced gradients, identical Adam steps: bit-identical
        torch.testing.assert_close(lora0[k], lora1[k], rtol=0, atol=0, msg=k)
    assert all(lora0[k].abs().max() > 0 for k in lora0 if "lora_B" in k)

    # the folder loads into the model rank 0 trained: same factors, same eval features (neck included)
    cfg = stage1_cfg(run)
    loaded = load_expert_model(cfg, cfg.MODEL.WEIGHTS, str(expert)).eval()
    params = dict(loaded.named_parameters())
    for k, v in lora0.items():
        torch.testing.assert_close(params[k], v, rtol=0, atol=0, msg=k)
    with torch.no_grad():
        feats = loaded({"images": torch.load(run / "probe.pt")})
    torch.testing.assert_close(feats, torch.load(run / "s1_probe_features.pt"), rtol=1e-5, atol=1e-5)

    # pseudo-labels: the same on both ranks, and those of a single-process clustering of the source model's
    # features (the fresh expert has B = 0, so the model clustered before epoch 0 is the source model)
    labels = np.load(run / "s1_labels_rank0.npy")
    np.testing.assert_array_equal(labels, np.load(run / "s1_labels_rank1.npy"))
    target = DATASET_REGISTRY.get("SynthReIDC")(root=str(run / "data"))
    p = cfg.PLUGINS.PSEUDO_LABEL
    feats = extract_features(cfg, build_expert_model(cfg, cfg.MODEL.WEIGHTS), [(it[0], it[2]) for it in target.train],
                             batch_size=p.FEATURE_BATCH)
    single = cluster_features(feats, k1=p.K1, k2=p.K2, eps=EPS, rho=p.RHO, min_samples=p.MIN_SAMPLES)
    np.testing.assert_array_equal(labels, single.labels)
    assert single.num_clusters >= 2  # the per-rank P x K sampler needs 2 identities

    metrics = json.loads((run / "s1_results.json").read_text())
    assert all(math.isfinite(v) for v in metrics.values()) and 0 <= metrics["mAP"] <= 100


@pytest.mark.slow
def test_stage2_gates_trained_and_ranks_agree(run):
    gates0, gates1 = (load_file(str(run / f"s2_gates_rank{r}.safetensors")) for r in (0, 1))
    # 1 block: attn.qkv, attn.proj, mlp.fc1, mlp.fc2, each with a SAGE gate (w: N x d_out, tau)
    layers = {k.rsplit(".gate.", 1)[0] for k in gates0}
    assert len(layers) == 4 and gates0.keys() == gates1.keys() == {
        f"{n}.gate.{p}" for n in layers for p in ("weight", "tau")}
    for k in gates0:
        torch.testing.assert_close(gates0[k], gates1[k], rtol=0, atol=0, msg=k)
    for n in layers:
        w = gates0[f"{n}.gate.weight"]
        assert w.shape[0] == 33, n  # N = 32 patches + the class token
        # trained: w left its zero init, and tau its init 1 (d loss / d tau = 0 only while w = 0)
        assert w.abs().max() > 0, f"{n}: gate weight still at its zero init"
        assert gates0[f"{n}.gate.tau"].item() != 1.0, f"{n}: gate temperature never updated"
    np.testing.assert_array_equal(np.load(run / "s2_labels_rank0.npy"), np.load(run / "s2_labels_rank1.npy"))

    metrics = json.loads((run / "s2_results.json").read_text())
    assert {"Rank-1", "mAP"} <= metrics.keys()
    assert all(math.isfinite(v) for v in metrics.values()) and 0 <= metrics["mAP"] <= 100
