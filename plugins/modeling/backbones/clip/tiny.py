"""The tiny CLIP: open_clip's own ``CLIP`` class at a laptop size, contrastively pre-trained once on the
procedural image/caption pairs and cached under ``$FASTREID_DATASETS`` (so every CLIP demo starts from a model
that has learnt something real: colours, garments, bags of people, named in captions).

Weights contract (what a user of ``tiny_clip_weights()`` may rely on):

- architecture ``open_clip.model.CLIP(**TINY_CLIP_CONFIG, quick_gelu=True)``; input 128x64 (H x W), patch 16
  (an 8x4 grid + CLS = 33 tokens, as ViT-B/16 tokenises; patch 8 would quadruple the image-tower cost);
- images RGB in [0, 1] normalised with mean = std = 0.5 per channel (CLIP-ReID's convention; fast-reid's
  ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` on its 0-255 scale: 127.5 / 127.5);
- text: open_clip's ``ViT-B-16`` tokenizer, context 77, vocabulary 49,408; the text feature is open_clip's own
  EOT (argmax) token after ``ln_final`` @ ``text_projection``;
- one ``.safetensors`` file of the full state dict (open_clip / OpenAI key names), float32, with
  ``metrics.json`` beside it (text->image R@1 vs chance, frozen-tower ReID mAP vs random init, seconds, recipe).

The recipe (:class:`TinyClipRecipe`, why each default is what it is in its comments) and the pre-training loop
(:func:`pretrain_tiny_clip`) are cfg-free; :func:`tiny_clip_weights` is the cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip.model import CLIP
from tqdm import tqdm

from ....compat.checkpoint import read_safetensors
from .text_encoder import CLIPTextEncoder
from .tiny_eval import PIXEL_MEAN, PIXEL_STD, normalise, reid_map_of, text_to_image_recall

__all__ = ["TINY_CLIP_CONFIG", "PIXEL_MEAN", "PIXEL_STD", "TINY_CLIP_VERSION", "TinyClipRecipe", "PairData",
           "build_tiny_clip", "load_pairs", "normalise", "pretrain_tiny_clip",
           "tiny_clip_dir", "tiny_clip_weights", "load_tiny_clip", "read_metrics"]

logger = logging.getLogger("fastreid." + __name__)

# open_clip's model-config layout. Vision: 4 blocks of width 128 (4 heads of 32), patch 16 on 128x64.
# Text: the real CLIP's context (77) and vocabulary (49,408) so open_clip's tokenizer and CLIP-ReID's prompt
# "A photo of a X X X X person." work unchanged; 4 causal blocks of width 128.
TINY_CLIP_CONFIG: Dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": [128, 64], "layers": 4, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
TOKENIZER_NAME = "ViT-B-16"
TINY_CLIP_VERSION = "2"  # bump when the training code changes in a way the recipe fields do not show
WEIGHTS_FILE = "tiny_clip.safetensors"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TinyClipRecipe:
    """Everything that decides the pre-trained weights (hashed into the cache folder name).

    Why this recipe learns (measured, seed 0, 1 torch thread, text->image R@1 on 300 test images / 600 captions,
    chance 2%): a first try (AdamW 1e-3, no warm-up, 200 steps x 128 pairs) reached 6%, and 2e-3 collapsed to
    the uniform solution (loss = ln B). Here:

    - linear warm-up (30 steps) then cosine decay, with the embedding tables (token, positional, class) at 0.1x
      the rate, make 2e-3 train (8.5% after 200 x 64 pairs) where 1e-3 learns too slowly (4.7% after 150 x 64)
      and 3e-3 still collapses to the uniform solution (loss 4.07-4.15 = ln 64, with or without the 0.1x). The
      0.1x is a precaution, not ablated at 2e-3: with Adam every row touched moves by ~lr per step, i.e. by its
      whole init scale (0.01-0.02) within ~10 steps at the full rate;
    - batches of 128 distinct identities (no false negatives; 128 beats 64 at equal compute: 16.8% after
      200 x 128 vs 9.2% after 400 x 64; 256 x 150 gave 14.2%), each image paired with a caption drawn from all
      captions of its identity;
    - 300 steps: 22.5% R@1 (11x chance), frozen image tower ReID mAP 32.2 on SynthReIDA vs 6.8 random init.
    """

    # -- data: dedicated procedural domains (random styles drawn from their names; never the ReID demo
    #    domains A-D), CUHK-PEDES format (2 captions per image). Five domains x 20 test ids give the test split
    #    of 5 x 10 ids x 6 images = 300 images / 600 captions (chance R@1 = 6 / 300 = 2%).
    domains: Tuple[str, ...] = ("TC1", "TC2", "TC3", "TC4", "TC5")
    train_ids: int = 100                 # per domain (500 training identities, 3,000 images)
    test_ids: int = 20                   # per domain, halved into val / test by the CUHK-PEDES writer
    images_per_id: int = 6
    num_cameras: int = 6                 # more viewpoint / lighting variety per identity
    # -- batches: B distinct identities per step (no false negatives among the in-batch negatives); the caption
    #    is drawn from ALL captions of the identity (the generator describes the person, not the view), which
    #    multiplies caption variety per image by images_per_id.
    steps: int = 300
    batch_size: int = 128
    identity_captions: bool = True
    # -- augmentation (geometric only: colours are what captions name, so no colour jitter)
    hflip: bool = True
    max_shift: int = 4                   # random translation in pixels (zero-padded crop), both axes
    # -- optimisation: AdamW, linear warm-up then cosine decay to min_lr_ratio * lr
    lr: float = 2e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.1            # matrices only (no decay on gains, biases, embeddings, temperature)
    embed_lr_scale: float = 0.1          # learning-rate multiplier of the embedding tables
    betas: Tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0               # global grad-norm clip
    init_temperature: float = 0.07       # logit scale starts at 1 / 0.07 (CLIP's), learnt
    max_logit_scale: float = 100.0       # clamp (CLIP's)
    # -- ReID check of the frozen image tower (Market-format procedural domain, its default size)
    reid_domain: str = "A"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A short hash of the recipe, the model config, the code version and the data generator version."""
        from ....data.synthetic import GENERATOR_VERSION

        blob = json.dumps({"recipe": self.to_dict(), "config": TINY_CLIP_CONFIG, "version": TINY_CLIP_VERSION,
                           "generator": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_tiny_clip(seed: Optional[int] = None) -> CLIP:
    """A randomly initialised tiny CLIP (float32); ``seed`` seeds torch's global RNG first."""
    from .model import build_clip_model

    if seed is not None:
        torch.manual_seed(seed)
    return build_clip_model(TINY_CLIP_CONFIG, quick_gelu=True)


# ----------------------------------------------------------------------------------------------------- data
@dataclass
class PairData:
    """Images and captions of the pre-training domains, in memory.

    images: (N, 3, H, W) uint8. pids: (N,) int64, unique across domains. split: (N,) 'train' / 'val' / 'test'.
    tokens: (M, 77) int64 caption tokens; caption_image: (M,) index of the image each caption describes.
    """
    images: torch.Tensor
    pids: np.ndarray
    split: np.ndarray
    tokens: torch.Tensor
    caption_image: np.ndarray

    def subset(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """(image indices, caption indices) of ``split``."""
        img = np.flatnonzero(self.split == split)
        cap = np.flatnonzero(np.isin(self.caption_image, img))
        return img, cap


def data_dir(root: str) -> Path:
    return Path(root) / "tiny_clip" / "data"


def load_pairs(root: str, recipe: TinyClipRecipe, *, progress: bool = True) -> PairData:
    """Generate (once, atomically, by the procedural generator) and read the recipe's CUHK-PEDES-format domains
    under ``<root>/tiny_clip/data/<domain>``."""
    from PIL import Image

    from ....data.datasets.text_retrieval_base import load_json_list, parse_text_records
    from ....data.synthetic import SynthConfig, generate_domain
    from .tokenizer import tokenize

    cfg = SynthConfig(seed=0, train_ids=recipe.train_ids, test_ids=recipe.test_ids,
                      images_per_id=recipe.images_per_id, num_cameras=recipe.num_cameras, junk=0, distractors=0)
    images, pids, split, captions, cap_img = [], [], [], [], []
    for d, domain in enumerate(recipe.domains):
        generate_domain(data_dir(root), domain, cfg, formats=("cuhk_pedes",), progress=progress)
        base = data_dir(root) / domain / "CUHK-PEDES"
        anno = str(base / "reid_raw.json")
        records = parse_text_records(load_json_list(anno, "tiny CLIP pre-training captions"), path_key="file_path",
                                     id_base=1, splits=("train", "val", "test"), source=anno)
        for rec in records:
            with Image.open(base / "imgs" / rec.image_path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            for c in rec.captions:
                captions.append(c)
                cap_img.append(len(images))
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
            pids.append(d * 100_000 + rec.pid)
            split.append(rec.split)
    return PairData(images=torch.stack(images), pids=np.asarray(pids, dtype=np.int64),
                    split=np.asarray(split), tokens=tokenize(captions), caption_image=np.asarray(cap_img))


def _augment(x: torch.Tensor, rng: np.random.Generator, recipe: TinyClipRecipe) -> torch.Tensor:
    """Random horizontal flip and translation (zero padding) of a uint8 batch; geometric only."""
    b, _, h, w = x.shape
    if recipe.hflip:
        flip = torch.from_numpy(rng.random(b) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    s = recipe.max_shift
    if s > 0:
        padded = F.pad(x, (s, s, s, s))
        dy, dx = rng.integers(0, 2 * s + 1, b), rng.integers(0, 2 * s + 1, b)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return x


class _BatchSampler:
    """Per step: ``batch_size`` distinct training identities, one random image each, one random caption of the
    identity (or of the image when ``identity_captions`` is off)."""

    def __init__(self, data: PairData, recipe: TinyClipRecipe, rng: np.random.Generator):
        self.data, self.recipe, self.rng = data, recipe, rng
        img, cap = data.subset("train")
        ids = data.pids[img]
        self.ids = np.unique(ids)
        if recipe.batch_size > self.ids.size:
            raise ValueError(f"batch_size {recipe.batch_size} > {self.ids.size} training identities: raise "
                             f"train_ids or lower batch_size")
        self.images_of = {p: img[ids == p] for p in self.ids}
        cap_ids = data.pids[data.caption_image[cap]]
        self.captions_of_id = {p: cap[cap_ids == p] for p in self.ids}
        self.captions_of_img: Dict[int, List[int]] = {}
        for c in cap:
            self.captions_of_img.setdefault(int(data.caption_image[c]), []).append(int(c))

    def __call__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng
        chosen = rng.choice(self.ids, self.recipe.batch_size, replace=False)
        imgs, caps = [], []
        for p in chosen:
            i = int(rng.choice(self.images_of[p]))
            pool = self.captions_of_id[p] if self.recipe.identity_captions else self.captions_of_img[i]
            imgs.append(i)
            caps.append(int(rng.choice(pool)))
        x = _augment(self.data.images[imgs], rng, self.recipe)
        return normalise(x), self.data.tokens[caps]


# ------------------------------------------------------------------------------------------------- training
def _param_groups(model: CLIP, weight_decay: float, embed_lr_scale: float) -> List[dict]:
    """AdamW groups: matrices (decayed), gains / biases / temperature (not decayed), embedding tables (token,
    positional, class: not decayed, learning rate scaled by ``embed_lr_scale``)."""
    decay, no_decay, tables = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("embedding") or name.endswith("embedding.weight"):
            tables.append(p)
        elif p.ndim < 2 or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
            {"params": tables, "weight_decay": 0.0, "lr_scale": embed_lr_scale}]


def _lr_at(step: int, recipe: TinyClipRecipe) -> float:
    """Linear warm-up from lr / warmup to lr, then cosine decay to min_lr_ratio * lr at the last step. (timm's
    CosineLRScheduler takes one absolute floor for every parameter group; here each group, e.g. the embedding
    tables at a smaller rate, decays to the same fraction of its own rate.)"""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    t = min(1.0, (step - recipe.warmup_steps) / span)
    low = recipe.lr * recipe.min_lr_ratio
    return low + 0.5 * (recipe.lr - low) * (1 + math.cos(math.pi * t))


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def pretrain_tiny_clip(root: str, *, recipe: TinyClipRecipe = TinyClipRecipe(), seed: int = 0,
                       progress: bool = True, evaluate: bool = True, reid: bool = True,
                       data: Optional[PairData] = None) -> Tuple[CLIP, dict]:
    """Pre-train the tiny CLIP on the recipe's procedural pairs; returns (model in eval mode, metrics).

    Args:
        root: dataset root; the pairs are generated under ``<root>/tiny_clip/data`` and, with ``reid``, the
            Market-format domain ``recipe.reid_domain`` under ``<root>/synthreid`` (as the demos read it).
        recipe: the training recipe.
        seed: seeds the initialisation, the batch sampling and the augmentation (the run is deterministic for
            a given seed and torch thread count).
        progress: show tqdm progress bars.
        evaluate: measure text->image R@1 on the test split (300 images / 600 captions by default).
        reid: measure the frozen image tower's ReID mAP on ``recipe.reid_domain``, and a random-init tower's.
        data: pairs already loaded by :func:`load_pairs` (tests reuse them).

    Returns metrics: ``loss_first`` / ``loss_last`` (mean of the first / last 10% of steps), ``train_seconds``
    (optimisation only), ``data_seconds``, ``peak_rss_mb`` and, when measured, ``r1`` / ``r5`` / ``chance`` /
    ``num_test_images`` / ``num_test_captions`` (percent) and ``reid_map`` / ``random_map`` / ``reid_r1`` /
    ``random_r1`` (percent).
    """
    t0 = time.perf_counter()
    if data is None:
        data = load_pairs(root, recipe, progress=progress)
    data_seconds = time.perf_counter() - t0
    model = build_tiny_clip(seed)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()} if reid else None
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / recipe.init_temperature))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC11]))
    sampler = _BatchSampler(data, recipe, rng)
    opt = torch.optim.AdamW(_param_groups(model, recipe.weight_decay, recipe.embed_lr_scale), lr=recipe.lr,
                            betas=recipe.betas, eps=recipe.eps)
    max_scale = math.log(recipe.max_logit_scale)
    losses: List[float] = []
    text_encoder = CLIPTextEncoder(model)  # open_clip's text modules, run only up to the EOT token (same values)
    clip_loss = ClipLoss()  # open_clip's symmetric InfoNCE over the batch (normalised features, exp'd scale)
    model.train()
    t1 = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="tiny CLIP pre-training", unit="step", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe) * group["lr_scale"]
        images, tokens = sampler()
        loss = clip_loss(F.normalize(model.encode_image(images), dim=-1), F.normalize(text_encoder(tokens), dim=-1),
                         model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, max_scale)
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    train_seconds = time.perf_counter() - t1
    model.eval()
    tenth = max(1, len(losses) // 10)
    metrics = {"loss_first": float(np.mean(losses[:tenth])), "loss_last": float(np.mean(losses[-tenth:])),
               "logit_scale": float(model.logit_scale.detach().exp()), "train_seconds": round(train_seconds, 1),
               "data_seconds": round(data_seconds, 1), "steps": recipe.steps, "seed": seed,
               "torch_threads": torch.get_num_threads()}
    if evaluate:
        metrics.update(text_to_image_recall(model, data, split="test"))
    if reid:
        metrics.update(reid_map_of(model.visual, root, recipe.reid_domain, prefix="reid"))
        random_model = build_tiny_clip()
        random_model.load_state_dict(initial_state)
        metrics.update(reid_map_of(random_model.eval().visual, root, recipe.reid_domain, prefix="random"))
        metrics["reid_domain"] = recipe.reid_domain
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return model, metrics


# ---------------------------------------------------------------------------------------------------- cache
def tiny_clip_dir(root: Optional[str] = None, *, seed: int = 0, recipe: TinyClipRecipe = TinyClipRecipe()) -> Path:
    """The cache folder ``<root>/tiny_clip/v<version>-<recipe hash>-seed<seed>`` (root: $FASTREID_DATASETS or
    fast-reid's default ``datasets``)."""
    root = root if root is not None else os.environ.get("FASTREID_DATASETS", "datasets")
    return Path(root) / "tiny_clip" / f"v{TINY_CLIP_VERSION}-{recipe.key()}-seed{seed}"


def _is_complete(folder: Path) -> bool:
    return (folder / WEIGHTS_FILE).is_file() and (folder / METRICS_FILE).is_file()


def tiny_clip_weights(root: Optional[str] = None, *, seed: int = 0, progress: bool = True, force: bool = False,
                      recipe: TinyClipRecipe = TinyClipRecipe()) -> str:
    """Path of the tiny CLIP's pre-trained ``.safetensors``, pre-training it first when it is not cached.

    The result is written into a temporary sibling folder and renamed into place (``os.replace``): the final
    folder exists only complete, a crashed run leaves a ``.tmp-*`` folder that is never taken as done, and
    concurrent processes that race publish identical content (the run is deterministic) and keep the first.
    ``force`` retrains and replaces the cached folder.
    """
    from safetensors.torch import save_file

    root = root if root is not None else os.environ.get("FASTREID_DATASETS", "datasets")
    final = tiny_clip_dir(root, seed=seed, recipe=recipe)
    if _is_complete(final) and not force:
        return str(final / WEIGHTS_FILE)
    final.parent.mkdir(parents=True, exist_ok=True)
    logger.info(f"pre-training the tiny CLIP on procedural image/caption pairs into {final} (once; a few "
                f"minutes on 2 CPU cores)")
    model, metrics = pretrain_tiny_clip(root, recipe=recipe, seed=seed, progress=progress)
    metrics["recipe"] = recipe.to_dict()
    metrics["config"] = TINY_CLIP_CONFIG
    metrics["contract"] = {"pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "pixel_range": "[0, 1] RGB",
                           "image_size": TINY_CLIP_CONFIG["vision_cfg"]["image_size"], "quick_gelu": True,
                           "tokenizer": TOKENIZER_NAME, "text_pool": "argmax (EOT)"}
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"recipe_key": recipe.key(), "seed": str(seed)})
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=1, sort_keys=True))
        for f in (tmp / WEIGHTS_FILE, tmp / METRICS_FILE):
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the datasets beside it
        _publish(tmp, final, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final / WEIGHTS_FILE)


def _publish(tmp: Path, final: Path, force: bool) -> None:
    if force and final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        if not _is_complete(final):  # not a concurrent writer's finished result: a real error
            raise


def load_tiny_clip(path: str) -> CLIP:
    """The tiny CLIP with the weights of ``path`` (a file from :func:`tiny_clip_weights`), in eval mode."""
    model = build_tiny_clip()
    model.load_state_dict(read_safetensors(path), strict=True)
    return model.eval()


def read_metrics(path: str) -> dict:
    """The ``metrics.json`` next to a weights file returned by :func:`tiny_clip_weights`."""
    return json.loads((Path(path).parent / METRICS_FILE).read_text())
