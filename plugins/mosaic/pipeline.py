"""``MoSAICPipeline``: one config runs MoSAIC-ReID and its attribute-importance study end to end
(``PLUGINS.TRAINER: MoSAICPipeline``).

    OUTPUT_DIR/
      stage1/ stage2/                 CLIP-ReID (prompts; image encoder), as CLIPReIDPipeline
      mosaic/                         experts trained on the stage-2 model with every included attribute
      attribute_accuracy.md|csv       the attribute head: predicted vs oracle expert sets per study attribute
      sweep/results.csv|md            test-mode sweep: the mosaic/ model under every inclusion configuration
      sweep_retrain/<config>/         retrain-mode sweep: one model per configuration (MOSAIC.SWEEP.MODE)
      sweep_retrain/results.csv|md
      sweep_modes.md                  how far the two modes disagree
      importance/ importance_retrain/ tools/attribute_importance.py on each sweep (GLM, FIMP, PIMP, SHAP, t-tests)
      entropy_vs_importance.md        study ranking vs each attribute's entropy over the test identities
      results.json|md|csv             frozen CLIP, CLIP-ReID, MoSAIC (oracle router), MoSAIC (predicted router)

Every step resumes: stage folders with ``done.json`` are skipped, sweep rows already in a ``results.csv`` are not
evaluated again, report files are rewritten from what is on disk.
"""
from __future__ import annotations

import csv
import logging
import os
from typing import Dict, Optional, Tuple

from fastreid.utils import comm
from scipy.stats import spearmanr
from tabulate import tabulate

from ..compat.checkpoint import load_checkpoint_file
from ..engine.clipreid_pipeline import CLIPReIDStagePipeline
from ..engine.loaders import dataset_items, make_dataset_test_loader
from ..engine.results import metrics_of
from ..engine.stages import FINAL_CHECKPOINT, from_main, run_stage
from ..registry import TRAINER_REGISTRY
from .config import SWEEP_MODES
from .evaluation import accuracy_table, attribute_accuracy, identity_entropy
from .importance_report import write_text
from .meta_arch import MoSAIC
from .sweep import SweepTable, compare_modes, inclusion_configurations, run_sweep, safe_name
from .trainers import MoSAICTrainer, check_mosaic_cfg

__all__ = ["MoSAICPipeline", "load_mosaic"]

logger = logging.getLogger("fastreid." + __name__)


def _write_text(path: str, text: str) -> None:
    write_text(text, path)  # atomic: a killed run never leaves a half-written report

MIN_CONFIGURATIONS = 3  # below this a sweep's table is written but not analysed (no variance to explain)


def load_mosaic(cfg, path: str) -> MoSAIC:
    """A MoSAIC model of ``cfg`` with a trained checkpoint loaded strictly (weights_only), in eval mode."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MoSAIC checkpoint '{path}' does not exist")
    state = load_checkpoint_file(path)["model"]
    if "classifier.weight" in state:  # a training checkpoint: build its classifiers / prompts to load it whole
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.HEADS.NUM_CLASSES = int(state["classifier.weight"].shape[0])
        cfg.freeze()
    model = MoSAICTrainer.build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"'{path}' does not fit this MoSAIC config: missing {missing[:4]}, unexpected "
                       f"{unexpected[:4]} (another dataset, LAST_K or policy?)")
    return model.eval()


@TRAINER_REGISTRY.register()
class MoSAICPipeline(CLIPReIDStagePipeline):
    """CLIP-ReID stages 1-2 -> MoSAIC -> predicted-router row -> sweep(s) -> importance reports."""

    meta_architecture = "MoSAIC"
    title_prefix = "MoSAIC-ReID"

    def __init__(self, cfg):
        check_mosaic_cfg(cfg)
        if cfg.MOSAIC.SWEEP.MODE not in SWEEP_MODES:
            raise ValueError(f"MOSAIC.SWEEP.MODE must be one of {SWEEP_MODES}, got {cfg.MOSAIC.SWEEP.MODE!r}")
        super().__init__(cfg)
        self.test_name = cfg.DATASETS.TESTS[0]
        self.included = list(cfg.MOSAIC.INCLUDE) or None  # the config's inclusion (empty: every attribute)
        self._model: Optional[MoSAIC] = None

    @classmethod
    def build_model(cls, cfg):
        """``--eval-only``: a MoSAIC model to load ``MODEL.WEIGHTS`` (e.g. ``OUTPUT_DIR/mosaic/model_final.pth``)."""
        return MoSAICTrainer.build_model(cfg)

    @classmethod
    def test(cls, cfg, model):
        return MoSAICTrainer.test(cfg, model)

    # --- stages -----------------------------------------------------------------------------------------------

    def mosaic_cfg(self, folder: str, prompts: str, stage2: str, opts=(), include=None):
        # the stage's own evaluation is the oracle row; the predicted-router row is measured separately
        keys = {"CLIPREID.PROMPTS": prompts, "MODEL.WEIGHTS": os.path.join(stage2, FINAL_CHECKPOINT),
                "MOSAIC.ROUTER": "oracle"}
        if include is not None:
            keys["MOSAIC.INCLUDE"] = list(include)
        return self.stage_cfg(folder, list(self.cfg.MOSAIC.STAGE_OPTS) + list(opts), **keys)

    def train(self) -> Dict[str, Dict]:
        prompts, stage2 = self.train_clipreid()
        mcfg = self.mosaic_cfg("mosaic", prompts, stage2)
        included = list(self.cfg.MOSAIC.INCLUDE) or "all"
        self.record("MoSAIC-ReID (oracle router)", "MoSAIC-ReID",
                    run_stage(f"MoSAIC (attributes: {included})", mcfg, MoSAICTrainer))
        model = self.model_of(mcfg)
        if model.predictor is not None:
            self.predicted_row(mcfg, model)
        if self.cfg.MOSAIC.SWEEP.ENABLED:
            self.sweeps(mcfg, model, prompts, stage2)
        return self.report()

    def model_of(self, mcfg) -> MoSAIC:
        if self._model is None:
            self._model = load_mosaic(mcfg, os.path.join(mcfg.OUTPUT_DIR, FINAL_CHECKPOINT))
        return self._model

    def evaluate(self, mcfg, model: MoSAIC, *, router: str = "oracle", include=None) -> Dict[str, float]:
        """Test metrics with ``router`` and the study attributes ``include`` on (None: all; (): none)."""
        model.router_mode = router
        model.set_included(include)
        try:
            results = MoSAICTrainer.test(mcfg, model)
        finally:
            model.router_mode = "oracle"
            model.set_included(self.included)
        return from_main(metrics_of(results, self.test_name) if comm.is_main_process() else None)

    def predicted_row(self, mcfg, model: MoSAIC) -> None:
        row = "MoSAIC-ReID (predicted router)"
        if row not in self.results:
            self.record(row, "MoSAIC-ReID", self.evaluate(mcfg, model, router="predicted", include=self.included))
        else:
            self.order.append(row)
        path = os.path.join(self.root, "attribute_accuracy.md")
        if from_main(os.path.isfile(path)):
            return
        loader, _ = make_dataset_test_loader(mcfg, self.test_name)
        accuracy = attribute_accuracy(model, loader)  # every rank: each holds a shard of the loader
        if comm.is_main_process():
            rows = [f"{name},{v['accuracy']:.2f},{v['majority']:.2f},{int(v['annotated'])}"
                    for name, v in accuracy.items()]
            _write_text(os.path.join(self.root, "attribute_accuracy.csv"),
                        "\n".join(["attribute,accuracy,majority,annotated", *rows]) + "\n")
            table = accuracy_table(accuracy)
            _write_text(path, f"# Attribute head on {self.test_name} (query + gallery): predicted expert set == "
                         f"oracle's\n\n{table}\n")
            logger.info(f"attribute head accuracy on {self.test_name}:\n{table}")

    # --- the study --------------------------------------------------------------------------------------------

    def sweeps(self, mcfg, model: MoSAIC, prompts: str, stage2: str) -> None:
        s = self.cfg.MOSAIC.SWEEP
        configs = inclusion_configurations(model.schema, list(s.KINDS), list(s.EXTRA))
        logger.info(f"sweep: {len(configs)} inclusion configurations, mode {s.MODE}")
        tables = {}
        if s.MODE in ("test", "both"):
            table = SweepTable(os.path.join(self.root, "sweep", "results.csv"), model.schema.names)
            run_sweep(table, configs, lambda name, members: self.evaluate(mcfg, model, include=members),
                      progress=logger.info)
            tables["test"] = table
        if s.MODE in ("retrain", "both"):
            tables["retrain"] = self.retrain_sweep(configs, model.schema.names, prompts, stage2)
        if comm.is_main_process():
            self.study_reports(tables, model)

    def retrain_sweep(self, configs, attribute_names, prompts: str, stage2: str) -> SweepTable:
        s = self.cfg.MOSAIC.SWEEP
        names = [n for n, _ in configs]
        unknown = [n for n in s.RETRAIN if n not in names]
        if unknown:
            raise ValueError(f"MOSAIC.SWEEP.RETRAIN names unknown configurations {unknown}; the sweep has {names}")
        chosen = [(n, m) for n, m in configs if not s.RETRAIN or n in s.RETRAIN]
        table = SweepTable(os.path.join(self.root, "sweep_retrain", "results.csv"), attribute_names)

        def evaluate(name: str, members: Tuple[str, ...]) -> Dict[str, float]:
            if not members:  # nothing to train: the CLIP-ReID model
                return self.results.get("CLIP-ReID")
            c = self.mosaic_cfg(os.path.join("sweep_retrain", safe_name(name)), prompts, stage2,
                                opts=list(s.RETRAIN_OPTS), include=members)
            return run_stage(f"MoSAIC retrained on '{name}'", c, MoSAICTrainer)

        return run_sweep(table, chosen, evaluate, progress=logger.info)

    def study_reports(self, tables: Dict[str, SweepTable], model: MoSAIC) -> None:
        from .importance import analyse  # statsmodels / shap load only when a study runs

        s = self.cfg.MOSAIC.SWEEP
        analysed = {}
        for mode, table in tables.items():
            _write_text(os.path.splitext(table.path)[0] + ".md",
                   f"# Inclusion sweep ({mode} mode) on {self.test_name}\n\n{table.markdown()}\n")
            folder = os.path.join(self.root, "importance" if mode == "test" else "importance_retrain")
            if len(table.rows) < MIN_CONFIGURATIONS:
                logger.warning(f"{mode}-mode sweep: {len(table.rows)} configurations; the importance study needs at "
                               f"least {MIN_CONFIGURATIONS}: not analysed")
                continue
            analysed[mode] = folder
            analyse(table.path, folder, metrics=["mAP", "R-1"], attributes=list(table.attribute_names),
                    seed=int(s.SEED), n_estimators=int(s.N_ESTIMATORS), n_repeats=int(s.N_REPEATS))
        if len(tables) == 2:
            cmp = compare_modes(tables["test"], tables["retrain"])
            _write_text(os.path.join(self.root, "sweep_modes.md"), _modes_text(cmp))
        if analysed:
            entropy = identity_entropy(dataset_items([self.test_name], "query")
                                       + dataset_items([self.test_name], "gallery"), model.schema)
            folder = analysed.get("test") or analysed["retrain"]
            _write_text(os.path.join(self.root, "entropy_vs_importance.md"), _entropy_text(entropy, folder, self.test_name))


def _modes_text(cmp: Dict[str, float]) -> str:
    if not cmp.get("configurations"):
        return "# Sweep modes\n\nNo configuration ran in both modes.\n"
    return ("# Test-time switching vs retraining per configuration\n\n"
            f"{cmp['configurations']} configurations in both modes. mAP: mean |test - retrained| "
            f"{cmp['mean_abs_diff']:.2f}, max {cmp['max_abs_diff']:.2f}; mean test {cmp['mean_test']:.2f} vs "
            f"retrained {cmp['mean_retrained']:.2f}; Spearman rank correlation of the configurations "
            f"{cmp['spearman']:.3f}.\n")


def _read_csv(path: str) -> Dict[str, Dict[str, str]]:
    with open(path, newline="") as f:
        return {row["attribute"]: row for row in csv.DictReader(f)}


def _entropy_text(entropy: Dict[str, float], folder: str, test_name: str) -> str:
    glm = _read_csv(os.path.join(folder, "glm_mAP.csv"))
    imp = _read_csv(os.path.join(folder, "importance_mAP.csv"))
    names = list(entropy)

    def num(table, name, key):
        try:
            return float(table[name][key])
        except (KeyError, ValueError):
            return float("nan")

    coef = {n: num(glm, n, "coef") for n in names}
    shap = {n: num(imp, n, "mean_abs_shap") for n in names}
    rows = sorted(names, key=lambda n: -entropy[n])
    body = [[n, f"{entropy[n]:.3f}", f"{coef[n]:+.3f}", f"{shap[n]:.3f}"] for n in rows]
    lines = [f"# Study ranking vs identity entropy on {test_name}", "",
             "Entropy (bits) of each study attribute's expert pattern over the test identities: how much knowing it "
             "narrows down who a person is. On the procedural data identities are drawn from the attributes, so this "
             "is the generator's ground truth of how discriminative each attribute is.", "",
             tabulate(body, headers=["attribute", "entropy (bits)", "GLM coef (mAP)", "mean |SHAP| (mAP)"],
                      tablefmt="github"), ""]
    for label, score in (("GLM coefficient", coef), ("mean |SHAP|", shap)):
        valid = [n for n in names if score[n] == score[n]]
        if len(valid) > 2:
            rho = spearmanr([entropy[n] for n in valid], [score[n] for n in valid]).statistic
            top_e = set(sorted(valid, key=lambda n: -entropy[n])[:3])
            top_s = sorted(valid, key=lambda n: -score[n])[:3]
            lines.append(f"- {label}: Spearman rho vs entropy {rho:+.3f}; the study's top 3 {top_s}, of which "
                         f"{len(top_e & set(top_s))} are among the 3 highest-entropy attributes {sorted(top_e)}.")
    return "\n".join(lines) + "\n"
