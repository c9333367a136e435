"""CLIP-ReID's two trainers (TRAINER_REGISTRY).

``CLIPReIDPromptTrainer`` (stage 1): the image features of the training set are computed ONCE by the frozen
image tower (test transforms, no SIE) and cached in ``OUTPUT_DIR/image_features.safetensors``; only the identity
prompts ``cls_ctx`` train, with SupCon image->text + text->image (temperature 1) on batches of cached features:
each step runs the text tower on the batch's prompts and never the image tower. Adam, cosine with linear warm-up
per epoch (timm's ``CosineLRScheduler``, as the official code). Output: ``prompt_learner.safetensors``.

``CLIPReIDTrainer`` (stage 2): fast-reid's ``DefaultTrainer`` on the ``CLIPReID`` model with the stage-1 prompts
(``CLIPREID.PROMPTS``) loaded and the text feature of every identity computed once and frozen.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Tuple

import torch
from fastreid.data import build_reid_test_loader
from fastreid.data.common import CommDataset
from fastreid.engine import DefaultTrainer
from fastreid.modeling import build_model
from fastreid.utils import comm
from safetensors.torch import save_file
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from ..compat.checkpoint import load_checkpoint_file, read_safetensors
from ..data.mapper import build_extras_dataset
from ..modeling.losses import supervised_contrastive_loss
from ..modeling.meta_arch.clipreid import CLIPReID
from ..registry import TRAINER_REGISTRY
from .loaders import dataset_items
from .models import require_meta_arch
from .pseudo_label_hook import unwrap_model
from .seeding import derive_seed, seed_all

__all__ = ["CLIPReIDPromptTrainer", "CLIPReIDTrainer", "PROMPTS_FILE", "FEATURES_FILE", "load_prompts",
           "text_feature_bank"]

logger = logging.getLogger("fastreid." + __name__)

PROMPTS_FILE = "prompt_learner.safetensors"
FEATURES_FILE = "image_features.safetensors"
STATE_FILE = "prompt_training_last.pth"


def _autocast(enabled: bool, device: torch.device):
    return torch.autocast("cuda", dtype=torch.float16, enabled=enabled and device.type == "cuda")


def _save_atomic(tensors: Dict[str, torch.Tensor], path: str) -> None:
    tmp = path + ".tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)


def load_prompts(model: CLIPReID, path: str) -> None:
    """Load a stage-1 ``prompt_learner.safetensors`` into ``model.prompt_learner``; fails naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIPREID.PROMPTS '{path}' does not exist (stage 1's {PROMPTS_FILE})")
    state = read_safetensors(path)
    own = model.prompt_learner.state_dict()
    bad = [f"{k} {tuple(state[k].shape) if k in state else 'missing'} vs model {tuple(v.shape)}"
           for k, v in own.items() if k not in state or state[k].shape != v.shape]
    if bad:
        raise KeyError(f"'{path}' does not fit the prompt learner: {bad[:3]} (another training set or template?)")
    model.prompt_learner.load_state_dict(state)


@torch.no_grad()
def text_feature_bank(model: CLIPReID, *, batch_size: int = 64, amp: bool = True) -> torch.Tensor:
    """Text feature of every identity's prompt (num_classes, E), float32."""
    model = unwrap_model(model)
    out = []
    with _autocast(amp, model.device):
        for start in range(0, model.num_classes, batch_size):
            labels = torch.arange(start, min(start + batch_size, model.num_classes), device=model.device)
            out.append(model.prompt_text_features(labels).float())
    return torch.cat(out)


def training_set(cfg) -> CommDataset:
    """The training items of ``DATASETS.NAMES`` with test transforms, relabelled exactly as fast-reid's train
    loader does (stage 2 sees the same identity indices)."""
    items = dataset_items(cfg.DATASETS.NAMES, "train", combineall=cfg.DATASETS.COMBINEALL)
    if not items:
        raise ValueError(f"DATASETS.NAMES {tuple(cfg.DATASETS.NAMES)} hold no training images")
    return build_extras_dataset(cfg, items, is_train=False, relabel=True)


@TRAINER_REGISTRY.register()
class CLIPReIDPromptTrainer:
    """Stage 1 (see the module docstring). fast-reid trainer interface: ``resume_or_load``, ``train``,
    ``start_epoch`` / ``max_epoch``, classmethods ``build_model`` / ``test``."""

    def __init__(self, cfg):
        s = cfg.CLIPREID.STAGE1
        if int(s.EPOCHS) <= 0 or int(s.IMS_PER_BATCH) <= 0:
            raise ValueError(f"CLIPREID.STAGE1.EPOCHS and IMS_PER_BATCH must be > 0, got {s.EPOCHS}, {s.IMS_PER_BATCH}")
        self.train_set = training_set(cfg)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.HEADS.NUM_CLASSES = self.train_set.num_classes
        cfg.freeze()
        self.cfg = cfg
        self.model = self.build_model(cfg).train_prompts_only()
        self.optimizer = torch.optim.Adam([self.model.prompt_learner.cls_ctx], lr=float(s.BASE_LR),
                                          weight_decay=float(s.WEIGHT_DECAY))
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=int(s.EPOCHS), lr_min=float(s.MIN_LR),
                                           warmup_lr_init=float(s.WARMUP_LR), warmup_t=int(s.WARMUP_EPOCHS),
                                           cycle_limit=1, t_in_epochs=True)
        self.start_epoch, self.max_epoch = 0, int(s.EPOCHS)
        self.state_path = os.path.join(cfg.OUTPUT_DIR, STATE_FILE)

    @classmethod
    def build_model(cls, cfg) -> CLIPReID:
        return require_meta_arch(build_model(cfg), CLIPReID, "CLIP-ReID")

    @classmethod
    def test(cls, cfg, model):
        """The frozen CLIP's scores (stage 1 never changes the image tower), without the camera embedding, which
        is still at its random initialisation."""
        encoder = unwrap_model(model).image_encoder
        encoder.sie_enabled = False
        try:
            return DefaultTrainer.test(cfg, model)
        finally:
            encoder.sie_enabled = True

    def resume_or_load(self, resume: bool = True) -> None:
        """Continue from ``OUTPUT_DIR/prompt_training_last.pth`` when it exists (and ``resume``)."""
        if not (resume and os.path.isfile(self.state_path)):
            return
        state = load_checkpoint_file(self.state_path)["model"]  # weights_only=True; a bare dict comes wrapped
        self.model.prompt_learner.cls_ctx.data.copy_(state["cls_ctx"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = int(state["epoch"])
        logger.info(f"stage 1: resuming after epoch {self.start_epoch} from {self.state_path}")

    def image_features(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features (N, E) float32, labels (N,)) of the training set, computed once and cached on disk."""
        path = os.path.join(self.cfg.OUTPUT_DIR, FEATURES_FILE)
        n = len(self.train_set)
        if os.path.isfile(path):
            cached = read_safetensors(path)
            if cached["features"].shape[0] == n:
                logger.info(f"stage 1: {n} cached image features read from {path}")
                return cached["features"], cached["labels"]
            logger.warning(f"{path} holds {cached['features'].shape[0]} features, the training set {n}: recomputing")
        batch = int(self.cfg.CLIPREID.STAGE1.FEATURE_BATCH) or int(self.cfg.TEST.IMS_PER_BATCH)
        loader, _ = build_reid_test_loader(test_set=self.train_set, test_batch_size=batch, num_query=0,
                                           num_workers=int(self.cfg.DATALOADER.NUM_WORKERS))
        model = self.model.eval()
        feats, labels = [], []
        with torch.no_grad(), _autocast(bool(self.cfg.CLIPREID.STAGE1.AMP), model.device):
            for data in tqdm(loader, desc="stage 1: image features (once)", disable=not comm.is_main_process()):
                feats.append(model.prompt_image_features(data["images"]).float().cpu())
                labels.append(data["targets"].long().cpu())
        feats, labels = torch.cat(feats)[:n], torch.cat(labels)[:n]  # the inference sampler may pad the last batch
        if comm.is_main_process():
            os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
            _save_atomic({"features": feats, "labels": labels}, path)
        return feats, labels

    def _checkpoint(self, epoch: int) -> None:
        if comm.is_main_process():
            tmp = self.state_path + ".tmp"
            torch.save({"cls_ctx": self.model.prompt_learner.cls_ctx.detach().cpu(),
                        "optimizer": self.optimizer.state_dict(), "epoch": epoch}, tmp)
            os.replace(tmp, self.state_path)

    def train(self):
        s = self.cfg.CLIPREID.STAGE1
        features, labels = self.image_features()
        device = self.model.device
        features, labels = features.to(device), labels.to(device)
        n, batch = features.shape[0], min(int(s.IMS_PER_BATCH), features.shape[0])
        steps = n // batch
        seed = max(int(self.cfg.PLUGINS.SEED), 0)
        self.model.train()
        bar = tqdm(range(self.start_epoch, self.max_epoch), desc="stage 1: prompt learning",
                   disable=not comm.is_main_process())
        for epoch in bar:
            if int(self.cfg.PLUGINS.SEED) >= 0:  # an epoch resumed from prompt_training_last.pth repeats exactly
                seed_all(derive_seed(self.cfg.PLUGINS.SEED, "prompt learning", epoch) + comm.get_rank())
            self.scheduler.step(epoch + 1)  # the official loop counts epochs from 1
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).to(device)
            total = 0.0
            for i in range(steps):
                idx = order[i * batch:(i + 1) * batch]
                image, target = features[idx], labels[idx]
                text = self.model.prompt_text_features(target)
                loss = (supervised_contrastive_loss(image, text, target, target)
                        + supervised_contrastive_loss(text, image, target, target))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                total += loss.item()
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{total / steps:.4f}", lr=f"{lr:.2e}")
            logger.info(f"stage 1 epoch {epoch + 1}/{self.max_epoch}: loss {total / steps:.4f}, lr {lr:.3e}")
            if (epoch + 1) % int(s.CHECKPOINT_PERIOD) == 0 or epoch + 1 == self.max_epoch:
                self._checkpoint(epoch + 1)
        self.start_epoch = self.max_epoch
        if comm.is_main_process():
            _save_atomic(self.model.prompt_learner.state_dict(), os.path.join(self.cfg.OUTPUT_DIR, PROMPTS_FILE))
        comm.synchronize()
        self.model.eval()
        return self.test(self.cfg, self.model)


@TRAINER_REGISTRY.register()
class CLIPReIDTrainer(DefaultTrainer):
    """Stage 2: fast-reid's loop on ``CLIPReID`` with frozen identity text features (see the module docstring)."""

    @classmethod
    def build_model(cls, cfg) -> CLIPReID:
        model = CLIPReIDPromptTrainer.build_model(cfg).train_image_encoder()
        if cfg.CLIPREID.PROMPTS and model.num_classes > 0:
            load_prompts(model, cfg.CLIPREID.PROMPTS)
        return model

    def __init__(self, cfg):
        if float(cfg.CLIPREID.I2T_WEIGHT) > 0 and not cfg.CLIPREID.PROMPTS:
            raise ValueError("CLIPREID.I2T_WEIGHT > 0 needs the stage-1 prompts: set CLIPREID.PROMPTS (the "
                             "CLIPReIDPipeline does) or CLIPREID.I2T_WEIGHT 0")
        super().__init__(cfg)
        model = unwrap_model(self.model)
        if model.i2t_weight > 0:
            model.set_text_features(text_feature_bank(model, amp=bool(cfg.CLIPREID.STAGE1.AMP)))
            logger.info(f"stage 2: text features of {model.num_classes} identities computed once (frozen)")
