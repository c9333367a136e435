#!/usr/bin/env python
"""Convert the weights of official releases into this project's layouts: one tool, a ``--from`` per format.

    python tools/convert_weights.py --from clipreid --input OFFICIAL.pth --output OURS.pth \
        [--config-file configs/clipreid/market.yml] [--clip ViT-B-16.pt] [KEY VALUE ...]
    python tools/convert_weights.py --from openai-clip --input ViT-B-16.pt --output clip.safetensors
    python tools/convert_weights.py --from dmadapter --input OFFICIAL.pth --output OURS.pth \
        [--config-file configs/dmadapter/cuhk_pedes.yml] [KEY VALUE ...]
    python tools/convert_weights.py --from torchreid-osnet --input osnet_x0_25_market1501.pt --output OURS.pth \
        [--config-file configs/base/osnet_x0_25_market_eval.yml] [--drop-classifier] [--all-rows]

``--from clipreid``: an official CLIP-ReID stage-2 checkpoint (Syliz517/CLIP-ReID, ``torch.save(model.state_dict())``,
316 keys for ViT-B/16 with the SIE camera table, ``module.`` may prefix) -> a fast-reid checkpoint
``{"model": state_dict}`` of ``CLIPReID`` (tensors only), for ``tools/train_net.py --eval-only MODEL.WEIGHTS OURS``:

| official key                                              | ``CLIPReID`` key                              |
|-----------------------------------------------------------|-----------------------------------------------|
| ``image_encoder.<k>`` (OpenAI's ``visual.<k>``)           | ``image_encoder.visual.<k>``                  |
| ``cv_embed`` [cameras x views, 768]                       | ``image_encoder.camera_embed``                |
| ``text_encoder.transformer.*``                            | same                                          |
| ``text_encoder.positional_embedding`` [77, 512]           | same                                          |
| ``text_encoder.ln_final.*``, ``text_encoder.text_projection`` | same                                      |
| (not stored; OpenAI's ``token_embedding.weight``)         | ``text_encoder.token_embedding.weight`` (``--clip``) |
| ``prompt_learner.token_prefix`` [1,5,512], ``token_suffix`` [1,68,512], ``cls_ctx`` [ids,4,512] | same    |
| ``bottleneck.*`` [768], ``bottleneck_proj.*`` [512] (incl. running statistics) | same                     |
| ``classifier.weight`` [ids,768], ``classifier_proj.weight`` [ids,512] | same                              |

Nothing is transposed or resized (the official image tower already holds its 16x8 + 1 positional embedding);
floating tensors are cast to float32. The pure mapping is ``plugins/clipreid/convert.py``.

The token embedding only serves tokens -> text features (eval batches with ``text_tokens``): the identity
prompts' embeddings are stored in the checkpoint. With ``--config-file`` the tool builds ``CLIPReID`` from the
config (``MODEL.HEADS.NUM_CLASSES`` and ``MODEL.BACKBONE.CLIP.NUM_CAMERAS`` / ``NUM_VIEWS`` inferred from the
classifier and ``cv_embed`` shapes) and loads the result strictly, failing with the file and the first keys that
do not fit; it prints the keys the evaluation config must set.

``--from openai-clip``: OpenAI's TorchScript archive (``ViT-B-16.pt``), or any CLIP state dict with OpenAI's /
open_clip's key names (torch or safetensors, ``module.`` allowed) -> a plain ``.safetensors`` of open_clip's key
names, dtypes as stored; OpenAI's metadata entries (``input_resolution``, ``context_length``, ``vocab_size``) are
dropped. Use it as ``MODEL.BACKBONE.CLIP.WEIGHTS`` or as ``--clip`` here.

``--from dmadapter``: an official DM-Adapter checkpoint (Liu-Yating/DM-Adapter, an IRRA fork: ``{"model": ...}``,
1,026 keys for ViT-B/16, mixed precision, ``module.`` may prefix) -> a fast-reid checkpoint ``{"model": ...}`` of
``DMAdapter`` (float32) for ``configs/dmadapter/*.yml``; the mapping table is in ``plugins/dmadapter/convert.py``.
The official parameters that never enter its forward (``vision_param``, ``text_param``, ``co_vision_param``,
``v2i_proj.*``: 395,776 values) are dropped with a log line. With ``--config-file`` the result is loaded strictly
into ``DMAdapter`` built from the config.

``--from demo``: an official DeMo checkpoint (924973292/DeMo, ``torch.save(model.state_dict())``, ``module.`` may
prefix) -> a fast-reid checkpoint ``{"model": ...}`` of ``DeMo`` (float32) for ``configs/demo/*.yml``; the mapping
table is in ``plugins/demo/convert.py``. The model's shape (identities, cameras, PIFE / HDM / ATMoE, H, joint or
per-modality heads) is read from the checkpoint and printed; with ``--config-file`` those keys are set on the
config and the result is loaded strictly into ``DeMo`` built from it.

``--from torchreid-osnet``: a torchreid OSNet ReID checkpoint -> a fast-reid ``Baseline`` checkpoint
(``build_osnet_backbone`` + ``FCEmbeddingHead``); the mapping and its table are in ``plugins/modeling/convert_osnet.py``.
Every key is accounted for in the printed table; unmatched or mis-shaped backbone / embedding keys exit with 1.

Torch inputs are read with ``torch.load(weights_only=True)`` (or ``torch.jit.load`` for TorchScript archives):
nothing unpickles arbitrary objects. The last line printed is ``converted from=<fmt> keys=<n> output=<path>``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

import torch
from tabulate import tabulate

import plugins  # noqa: F401  # host-compat patches, e.g. fast-reid's checkpoint loader pinned to weights_only)
from plugins.clipreid.convert import (TOKEN_EMBEDDING_KEY, CheckpointInfo, ConvertedCheckpoint,
                                      convert_official_state, describe_keys, group_counts, prompt_embedding_error)
from plugins.compat.checkpoint import UnsafeCheckpointError
from plugins.modeling.backbones.clip.weights import load_state_strict, read_state_dict

FORMATS = ("clipreid", "openai-clip", "torchreid-osnet", "dmadapter", "demo")
PERSON_PROMPT = "A photo of a X X X X person."  # the official prompt of the person datasets


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source_format", required=True, choices=FORMATS, help="format of --input")
    p.add_argument("--input", required=True, help="the official weights file")
    p.add_argument("--output", required=True, help="clipreid: a torch file (.pth); openai-clip: a .safetensors")
    p.add_argument("--config-file", default="", help="clipreid: build CLIPReID from this config and load strictly")
    p.add_argument("--clip", default="", help="clipreid: OpenAI CLIP weights supplying token_embedding.weight")
    p.add_argument("--drop-classifier", action="store_true", help="torchreid-osnet: do not carry the classifier")
    p.add_argument("--all-rows", action="store_true", help="torchreid-osnet: print every key, not only problems")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (clipreid)")
    return p.parse_args(argv)


def _message(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


# --- clipreid ------------------------------------------------------------------------------------------------

def _token_embedding(path: str) -> torch.Tensor:
    state = read_state_dict(path)
    if "token_embedding.weight" not in state:
        raise KeyError(f"--clip '{path}' has no token_embedding.weight: it is {describe_keys(list(state))}")
    return state["token_embedding.weight"]


def _sie_keys(rows: int, cameras: int, views: int) -> Tuple[int, int]:
    """(NUM_CAMERAS, NUM_VIEWS) for a ``cv_embed`` of ``rows`` rows, keeping the config's split when it fits."""
    if rows == 0:
        return 0, 0
    if cameras > 0 and views > 0 and cameras * views == rows:
        return cameras, views
    if cameras == 0 and views == rows:
        return 0, views
    return rows, 0


def _config(args):
    """The evaluation config of --config-file + opts (unfrozen), with every method registered."""
    from plugins.config import import_methods, setup_cfg

    import_methods()
    cfg = setup_cfg(args.config_file, args.opts, freeze=False)
    if cfg.MODEL.META_ARCHITECTURE != "CLIPReID":
        raise ValueError(f"--config-file '{args.config_file}' builds MODEL.META_ARCHITECTURE "
                         f"{cfg.MODEL.META_ARCHITECTURE!r}; CLIP-ReID checkpoints load into 'CLIPReID'")
    return cfg


def _inferred_keys(info: CheckpointInfo, cfg) -> List[Tuple[str, object, object]]:
    """(config key, config value or None, value the checkpoint needs); sets the values in ``cfg`` when given."""
    clip = cfg.MODEL.BACKBONE.CLIP if cfg is not None else None
    cameras, views = _sie_keys(info.sie_rows, int(clip.NUM_CAMERAS) if clip else 0, int(clip.NUM_VIEWS) if clip else 0)
    rows = [("MODEL.HEADS.NUM_CLASSES", cfg.MODEL.HEADS.NUM_CLASSES if cfg else None, info.num_classes),
            ("MODEL.BACKBONE.CLIP.NUM_CAMERAS", clip.NUM_CAMERAS if clip else None, cameras),
            ("MODEL.BACKBONE.CLIP.NUM_VIEWS", clip.NUM_VIEWS if clip else None, views)]
    if cfg is not None:
        cfg.MODEL.HEADS.NUM_CLASSES, clip.NUM_CAMERAS, clip.NUM_VIEWS = info.num_classes, cameras, views
    return rows


def _grid(info: CheckpointInfo, cfg, source: str) -> str:
    """The patch grid as text; with a config, fails unless INPUT.SIZE_TEST gives the checkpoint's grid."""
    if cfg is None:
        guess = info.guess_grid()
        return (f"{info.num_patches} patches + CLS" + (f" ({guess[0]}x{guess[1]}: a {guess[0] * info.patch_size}x"
                f"{guess[1] * info.patch_size} input, presumably)" if guess else ""))
    size = [int(v) for v in cfg.INPUT.SIZE_TEST]
    gh, gw = info.grid_for(size)
    if gh * gw != info.num_patches:
        raise ValueError(f"'{source}' holds a positional embedding of {info.num_patches} patches, but INPUT.SIZE_TEST "
                         f"{size} with patch {info.patch_size} gives a {gh}x{gw} grid: set INPUT.SIZE_TRAIN / "
                         f"SIZE_TEST to the official run's INPUT.SIZE_TRAIN (its MODEL.STRIDE_SIZE must equal the "
                         f"patch size)")
    return f"{gh}x{gw} + CLS (INPUT.SIZE_TEST {size[0]}x{size[1]}, patch {info.patch_size})"


def _summary(conv: ConvertedCheckpoint, inferred, grid: str) -> str:
    info = conv.info
    groups = [(official, ours, n if n or ours != TOKEN_EMBEDDING_KEY else "absent (give --clip)")
              for official, ours, n in group_counts(conv.state) if n or ours == TOKEN_EMBEDDING_KEY]
    groups.append(("total", "", len(conv.state)))
    shapes = [(f"{key} (inferred)", value if old is None or old == value else f"{value} (config: {old})")
              for key, old, value in inferred]
    shapes += [("patch grid", grid),
               ("image tower", f"width {info.width}, {info.layers} blocks, patch {info.patch_size}, "
                               f"projection {info.embed_dim}"),
               ("text tower", f"width {info.text_width}, {info.text_layers} blocks, context {info.context_length}"),
               ("prompt tokens (prefix, learned, suffix)", info.prompt_lengths)]
    return (tabulate(groups, headers=["official keys", "CLIPReID keys", "converted"], tablefmt="github") + "\n\n"
            + tabulate(shapes, headers=["read from the checkpoint", "value"], tablefmt="github"))


def _check_token_embedding(conv: ConvertedCheckpoint, token_embedding, cfg, path: str) -> None:
    from plugins.modeling.backbones.clip import tokenize

    if token_embedding is None:
        print(f"no --clip: {TOKEN_EMBEDDING_KEY} is left out (only tokens -> text features need it; the identity "
              f"prompts' embeddings are in the checkpoint)")
        return
    template = cfg.CLIPREID.PROMPT if cfg is not None else PERSON_PROMPT
    err = prompt_embedding_error(conv.state, token_embedding, tokenize(template))
    verdict = "the checkpoint's prompts were built from this CLIP" if err < 1e-3 else (
        f"WARNING: the checkpoint's prompt embeddings are not this CLIP's token embeddings of {template!r} "
        f"(another CLIP, or another prompt?)")
    print(f"token_embedding.weight from {path}: prompt prefix/suffix max abs diff {err:.2e}: {verdict}")


def _load_into_model(conv: ConvertedCheckpoint, cfg, args) -> None:
    """Build CLIPReID from ``cfg`` (the checkpoint's shapes set) and load the converted state strictly."""
    from fastreid.modeling import build_model

    cfg.MODEL.BACKBONE.PRETRAIN = False  # the checkpoint supplies every weight
    cfg.MODEL.DEVICE = "cpu"
    allow = () if conv.has_token_embedding else (TOKEN_EMBEDDING_KEY,)
    load_state_strict(build_model(cfg), conv.state, args.input, allow_missing=allow)
    print(f"loaded strictly into CLIPReID built from {args.config_file}"
          + ("" if conv.has_token_embedding else f" ({TOKEN_EMBEDDING_KEY} left at random init)"))


def _print_config_notes(info: CheckpointInfo, inferred, cfg) -> None:
    values = {key: value for key, _, value in inferred}
    if info.sie_rows and not values["MODEL.BACKBONE.CLIP.NUM_VIEWS"]:
        print(f"NUM_CAMERAS = the {info.sie_rows} cv_embed rows assumes the run used MODEL.SIE_CAMERA only (the "
              f"person configs); a SIE_CAMERA + SIE_VIEW run has cameras x views rows: set both keys in the config")
    to_set = [(key, value) for key, old, value in inferred
              if (old is None and (value or key.endswith("NUM_CLASSES"))) or (old is not None and old != value)]
    if to_set:
        print("set in the evaluation config or on the command line: " + " ".join(f"{k} {v}" for k, v in to_set))
    elif cfg is not None:
        print("the config's NUM_CLASSES / NUM_CAMERAS / NUM_VIEWS already fit the checkpoint")
    print("the checkpoint does not record MODEL.BACKBONE.SIE_COE (the official MODEL.SIE_COE: code default 3.0, "
          "README commands 1.0) nor CLIPREID.NECK_FEAT (official TEST.NECK_FEAT): set both as the run used them")


def convert_clipreid(args) -> int:
    if args.output.endswith(".safetensors"):
        raise ValueError("--from clipreid writes a fast-reid checkpoint (a torch file, e.g. OURS.pth): fast-reid's "
                         "Checkpointer does not read .safetensors")
    token_embedding = _token_embedding(args.clip) if args.clip else None
    conv = convert_official_state(read_state_dict(args.input), token_embedding=token_embedding, source=args.input)
    cfg = _config(args) if args.config_file else None
    inferred = _inferred_keys(conv.info, cfg)
    print(_summary(conv, inferred, _grid(conv.info, cfg, args.input)))
    _check_token_embedding(conv, token_embedding, cfg, args.clip)
    if cfg is not None:
        _load_into_model(conv, cfg, args)
    else:
        print("not loaded into a model (no --config-file)")
    _print_config_notes(conv.info, inferred, cfg)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": conv.state}, args.output)
    print(f"converted from=clipreid keys={len(conv.state)} output={args.output}")
    return 0


# --- openai-clip ---------------------------------------------------------------------------------------------

def convert_openai_clip(args) -> int:
    from safetensors.torch import save_file

    if not args.output.endswith(".safetensors"):
        raise ValueError("--from openai-clip writes a .safetensors file: give --output NAME.safetensors")
    state = read_state_dict(args.input)  # TorchScript / torch / safetensors; metadata entries dropped
    needed = ("visual.conv1.weight", "visual.proj", "token_embedding.weight", "text_projection")
    missing = [k for k in needed if k not in state]
    if missing:
        raise KeyError(f"'{args.input}' is not an OpenAI / open_clip CLIP state dict (no {missing}); it looks like "
                       f"{describe_keys(list(state))}")
    towers = {}
    for key in state:
        part = "visual" if key.startswith("visual.") else "text" if key != "logit_scale" else "logit_scale"
        towers[part] = towers.get(part, 0) + 1
    conv, pos = state["visual.conv1.weight"], state["visual.positional_embedding"]
    rows = [(f"{part} keys", n) for part, n in towers.items()]
    rows += [("image tower", f"width {conv.shape[0]}, patch {conv.shape[-1]}, {pos.shape[0] - 1} patches + CLS, "
                             f"projection {state['visual.proj'].shape[1]}"),
             ("text tower", f"width {state['token_embedding.weight'].shape[1]}, vocabulary "
                            f"{state['token_embedding.weight'].shape[0]}"),
             ("dtypes", ", ".join(sorted({str(v.dtype).replace('torch.', '') for v in state.values()})))]
    print(tabulate(rows, headers=["read from the input", "value"], tablefmt="github"))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, args.output, metadata={"format": "pt"})
    print(f"converted from=openai-clip keys={len(state)} output={args.output}")
    return 0


def convert_torchreid_osnet(args) -> int:
    from plugins.modeling.convert_osnet import DEFAULT_CONFIG, build_target, convert, read_torchreid_state_dict

    if args.output.endswith(".safetensors"):
        raise ValueError("fast-reid's Checkpointer reads torch files only: use a .pth --output")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = build_target(args.config_file or os.path.join(repo, DEFAULT_CONFIG), args.opts).state_dict()
    report = convert(read_torchreid_state_dict(args.input), target, drop_classifier=args.drop_classifier)
    print(report.table(only_problems=not args.all_rows))
    problems = report.problems()
    if problems:
        print(f"\n{len(problems)} backbone/embedding keys did not load; nothing written.", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": report.state_dict}, args.output)
    print(f"converted from=torchreid-osnet keys={len(report.state_dict)} output={args.output}")
    return 0


def convert_dmadapter(args) -> int:
    from plugins.dmadapter.convert import convert_official_state

    if args.output.endswith(".safetensors"):
        raise ValueError("fast-reid's Checkpointer reads torch files only: use a .pth --output")
    conv = convert_official_state(read_state_dict(args.input), source=args.input)  # float32, module. stripped
    print(f"dropped {len(conv.dropped)} official parameters that never enter the forward: {sorted(conv.dropped)}")
    if args.config_file:
        from fastreid.modeling import build_model
        from plugins.config import import_methods, setup_cfg

        import_methods()
        cfg = setup_cfg(args.config_file, args.opts, freeze=False)
        if cfg.MODEL.META_ARCHITECTURE != "DMAdapter":
            raise ValueError(f"--config-file '{args.config_file}' builds {cfg.MODEL.META_ARCHITECTURE!r}; DM-Adapter "
                             f"checkpoints load into 'DMAdapter'")
        cfg.MODEL.BACKBONE.PRETRAIN, cfg.MODEL.DEVICE = False, "cpu"  # the checkpoint supplies every weight
        load_state_strict(build_model(cfg), conv.state, args.input)
        print(f"loaded strictly into DMAdapter built from {args.config_file}")
    else:
        print("not loaded into a model (no --config-file)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": conv.state}, args.output)
    print(f"converted from=dmadapter keys={len(conv.state)} output={args.output}")
    return 0


def convert_demo(args) -> int:
    from plugins.demo.convert import convert_official_state

    if args.output.endswith(".safetensors"):
        raise ValueError("fast-reid's Checkpointer reads torch files only: use a .pth --output")
    conv = convert_official_state(read_state_dict(args.input), source=args.input)  # float32, module. stripped
    shape = conv.shape
    inferred = [("MODEL.HEADS.NUM_CLASSES", shape.num_classes), ("MODEL.BACKBONE.CLIP.NUM_CAMERAS", shape.num_cameras),
                ("DEMO.PIFE", shape.pife), ("DEMO.HDM", shape.hdm), ("DEMO.ATMOE", shape.atmoe),
                ("DEMO.MOE_HEADS", shape.moe_heads), ("DEMO.HEADS", shape.heads)]
    print(tabulate([(k, v) for k, v in inferred if v is not None] + [("patches + CLS", f"{shape.num_patches} + 1")],
                   headers=["read from the checkpoint", "value"], tablefmt="github"))
    if args.config_file:
        from fastreid.modeling import build_model
        from plugins.config import import_methods, setup_cfg

        import_methods()
        cfg = setup_cfg(args.config_file, args.opts, freeze=False)
        if cfg.MODEL.META_ARCHITECTURE != "DeMo":
            raise ValueError(f"--config-file '{args.config_file}' builds {cfg.MODEL.META_ARCHITECTURE!r}; DeMo "
                             f"checkpoints load into 'DeMo'")
        cfg.merge_from_list([x for k, v in inferred if v is not None for x in (k, v)])
        cfg.MODEL.BACKBONE.PRETRAIN, cfg.MODEL.DEVICE = False, "cpu"  # the checkpoint supplies every weight
        load_state_strict(build_model(cfg), conv.state, args.input)
        print(f"loaded strictly into DeMo built from {args.config_file}")
    else:
        print("not loaded into a model (no --config-file)")
    print("the checkpoint does not record MODEL.BACKBONE.SIE_COE (official configs: 1.0) nor the test feature "
          "(DEMO.TEST_FEATURE): set them as the run used them")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": conv.state}, args.output)
    print(f"converted from=demo keys={len(conv.state)} output={args.output}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for flag, path in (("--input", args.input), ("--clip", args.clip), ("--config-file", args.config_file)):
        if path and not os.path.isfile(path):
            raise SystemExit(f"convert_weights --from {args.source_format}: error: {flag} '{path}' does not exist")
    run = {"clipreid": convert_clipreid, "openai-clip": convert_openai_clip,
           "torchreid-osnet": convert_torchreid_osnet, "dmadapter": convert_dmadapter,
           "demo": convert_demo}[args.source_format]
    try:
        return run(args)
    except (FileNotFoundError, KeyError, ValueError, UnsafeCheckpointError) as err:
        raise SystemExit(f"convert_weights --from {args.source_format}: error: {_message(err)}") from None


if __name__ == "__main__":
    sys.exit(main())
