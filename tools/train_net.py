#!/usr/bin/env python
"""Single entry point: fast-reid's engine with every plugin component and config key registered.

    python tools/train_net.py --config-file configs/base/synthetic.yml [--eval-only] [--resume]
        [--num-gpus N] [--num-machines M] [--machine-rank R] [--dist-url URL] [KEY VALUE ...]

Accepts fast-reid's usual flags. Without CUDA, ``--num-gpus N`` starts N CPU processes (gloo).
"""
import plugins  # applies the host-compatibility layer and registers every shared plugin component
from fastreid.engine import default_argument_parser, default_setup, launch
from fastreid.utils import comm
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils.env import seed_all_rng
from plugins.config import import_methods, setup_cfg
from plugins.registry import TRAINER_REGISTRY

import_methods()  # every method's trainers and models (plugins.config.METHODS)


def setup(args):
    """Build the config: fast-reid defaults + plugin and method keys + the YAML file + command-line overrides."""
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)  # seeds every RNG at random
    if cfg.PLUGINS.SEED >= 0:
        seed_all_rng(cfg.PLUGINS.SEED + comm.get_rank())
    return cfg


def main(args):
    cfg = setup(args)
    trainer_cls = TRAINER_REGISTRY.get(cfg.PLUGINS.TRAINER)
    if args.eval_only:
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False
        cfg.freeze()
        model = trainer_cls.build_model(cfg)
        Checkpointer(model).load(cfg.MODEL.WEIGHTS)
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
