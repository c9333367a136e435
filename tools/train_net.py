#!/usr/bin/env python
"""Single entry point: fast-reid's engine with every plugin component and config key registered.

    python tools/train_net.py --config-file configs/base/synthetic.yml [--eval-only] [--resume]
        [--num-gpus N] [--num-machines M] [--machine-rank R] [--dist-url URL] [KEY VALUE ...]

Accepts fast-reid's usual flags. Without CUDA, ``--num-gpus N`` starts N CPU processes (gloo).
"""
import os

import plugins  # applies the host-compatibility layer and registers every shared plugin component
import plugins.sage  # registers the SAGE-reID trainers
from fastreid.config import get_cfg
from fastreid.engine import default_argument_parser, default_setup, launch
from fastreid.utils import comm
from fastreid.utils.checkpoint import Checkpointer
from fastreid.utils.env import seed_all_rng
from plugins.compat.config_fixes import adjust_config_for_host
from plugins.config import add_plugins_config
from plugins.registry import TRAINER_REGISTRY
from plugins.sage.config import add_sage_config

# Each method's config keys, added before the YAML is read (a method's keys live in its own config.py).
METHOD_CONFIGS = (add_sage_config,)


def setup(args):
    """Build the config: fast-reid defaults + plugin keys + the YAML file + command-line overrides."""
    if args.config_file and not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"--config-file '{args.config_file}' does not exist")
    cfg = get_cfg()
    add_plugins_config(cfg)
    for add_method_config in METHOD_CONFIGS:
        add_method_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    adjust_config_for_host(cfg)
    cfg.freeze()
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
