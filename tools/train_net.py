#!/usr/bin/env python
"""Single entry point: fast-reid's engine with every plugin component and config key registered.

    python tools/train_net.py --config-file configs/base/synthetic.yml [--eval-only] [--resume]
        [--num-gpus N] [--num-machines M] [--machine-rank R] [--dist-url URL] [KEY VALUE ...]

Accepts fast-reid's usual flags. Without CUDA, ``--num-gpus N`` starts N CPU processes (gloo).
``--eval-only`` loads ``MODEL.WEIGHTS`` strictly (or, for a pipeline that rebuilds its trained model, the run in
``OUTPUT_DIR``) and writes its log, config and ``results.json`` to ``OUTPUT_DIR/eval/<timestamp>/``, never over
the run's own files (``plugins.engine.eval_only``).
"""
import plugins  # applies the host-compatibility layer and registers every shared plugin component
from fastreid.engine import default_argument_parser, default_setup, launch
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from plugins.config import import_methods, setup_cfg
from plugins.engine.eval_only import check_eval_request, eval_record_dir, load_eval_weights, write_eval_record
from plugins.engine.seeding import install_epoch_seeding
from plugins.registry import TRAINER_REGISTRY

import_methods()  # every method's trainers and models (plugins.config.METHODS)


def setup(args):
    """Build the config: fast-reid defaults + plugin and method keys + the YAML file + command-line overrides.
    Returns ``(cfg, record_dir)``: where this process writes its log and config (``OUTPUT_DIR``, or a fresh
    ``OUTPUT_DIR/eval/<timestamp>`` for ``--eval-only``)."""
    cfg = setup_cfg(args.config_file, args.opts)
    record_dir = cfg.OUTPUT_DIR
    logged = cfg
    if args.eval_only:
        check_eval_request(cfg, TRAINER_REGISTRY.get(cfg.PLUGINS.TRAINER))  # before anything is written
        record_dir = comm.all_gather(eval_record_dir(cfg.OUTPUT_DIR))[0] if comm.get_world_size() > 1 \
            else eval_record_dir(cfg.OUTPUT_DIR)
        logged = cfg.clone()
        logged.defrost()
        logged.OUTPUT_DIR = record_dir
        logged.freeze()
    default_setup(logged, args)  # logger + config.yaml in record_dir; seeds every RNG at random
    if cfg.PLUGINS.SEED >= 0:
        seed_all_rng(cfg.PLUGINS.SEED + comm.get_rank())
    return cfg, record_dir


def main(args):
    cfg, record_dir = setup(args)
    trainer_cls = TRAINER_REGISTRY.get(cfg.PLUGINS.TRAINER)
    if args.eval_only:
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False
        cfg.freeze()
        model = trainer_cls.build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            load_eval_weights(model, cfg.MODEL.WEIGHTS)
        results = trainer_cls.test(cfg, model)
        if comm.is_main_process():
            write_eval_record(record_dir, weights=cfg.MODEL.WEIGHTS or cfg.OUTPUT_DIR, results=results)
        return results
    trainer = trainer_cls(cfg)
    # seeded runs: every epoch of a fast-reid trainer from (PLUGINS.SEED, epoch), so --resume repeats the run exactly;
    # pipelines seed their stages themselves (plugins.engine.seeding)
    install_epoch_seeding(trainer, cfg.PLUGINS.SEED if cfg.PLUGINS.SEED >= 0 else None)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
