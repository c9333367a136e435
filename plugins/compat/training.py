"""Runtime patches of fast-reid's training loop and image reading: nothing trained is lost to a crash after it.

- ``final_checkpoint_before_eval``: ``DefaultTrainer.build_hooks`` puts the evaluation hook before the
  checkpointer (so that a failing evaluation can be debugged from the previous checkpoint); a crash in the final
  evaluation (a corrupt test image, a misconfigured test set) then loses the whole training before
  ``model_final.pth`` is written. We insert a hook right before the evaluation that writes ``model_final`` after the
  last epoch; fast-reid's checkpointer still writes it again afterwards with the evaluation metric.
- ``named_unreadable_image``: fast-reid's ``read_image`` lets PIL's ``OSError: image file is truncated`` (or
  ``cannot identify image file``) escape from a DataLoader worker without the file's path. We re-raise it as
  :class:`UnreadableImageError` naming the file and pointing at ``tools/check_images.py``.
"""
from __future__ import annotations

import inspect

from .base import Patch

__all__ = ["UnreadableImageError", "FinalCheckpointBeforeEval", "read_image_naming_file"]


class UnreadableImageError(OSError):
    """An image file that PIL cannot decode (truncated, corrupt, not an image); the message names it."""


def read_image_naming_file(file_name, format=None):
    """fast-reid's ``read_image`` (same arguments and result), failing with the file's path."""
    try:
        return _HOST_READ_IMAGE(file_name, format)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises all three for broken files
        raise UnreadableImageError(f"cannot read image '{file_name}': {type(err).__name__}: {err} "
                                   f"(tools/check_images.py lists every unreadable image of a config's "
                                   f"datasets)") from None


_HOST_READ_IMAGE = None


def _read_image_unnamed() -> bool:
    from fastreid.data import common, data_utils

    return common.read_image is not read_image_naming_file or data_utils.read_image is not read_image_naming_file


def _name_unreadable_images() -> None:
    global _HOST_READ_IMAGE
    from fastreid.data import common, data_utils

    if _HOST_READ_IMAGE is None:
        _HOST_READ_IMAGE = data_utils.read_image
    data_utils.read_image = read_image_naming_file
    common.read_image = read_image_naming_file  # CommDataset imported the name itself


def _final_hook_class():
    from fastreid.engine.hooks import HookBase

    class FinalCheckpointBeforeEval(HookBase):
        """After the last epoch, write ``model_final`` before the evaluation hook runs."""

        def __init__(self, checkpointer):
            self.checkpointer = checkpointer

        def after_epoch(self):
            if self.trainer.epoch >= self.trainer.max_epoch - 1:
                self.checkpointer.save("model_final", epoch=self.trainer.epoch)

    return FinalCheckpointBeforeEval


FinalCheckpointBeforeEval = None  # the hook class, created with the patch (it subclasses fast-reid's HookBase)


def _eval_before_final_checkpoint() -> bool:
    from fastreid.engine import DefaultTrainer

    if getattr(DefaultTrainer.build_hooks, "_final_checkpoint_first", False):
        return False
    src = inspect.getsource(DefaultTrainer.build_hooks)
    return "EvalHook" in src and "PeriodicCheckpointer" in src and src.index("EvalHook") < \
        src.index("PeriodicCheckpointer")


def _save_final_before_eval() -> None:
    global FinalCheckpointBeforeEval
    from fastreid.engine import DefaultTrainer, hooks
    from fastreid.utils import comm

    FinalCheckpointBeforeEval = _final_hook_class()
    host_build_hooks = DefaultTrainer.build_hooks

    def build_hooks(self):
        ret = host_build_hooks(self)
        if comm.is_main_process():
            at = next((k for k, h in enumerate(ret) if isinstance(h, hooks.EvalHook)), len(ret))
            ret.insert(at, FinalCheckpointBeforeEval(self.checkpointer))
        return ret

    build_hooks._final_checkpoint_first = True
    build_hooks.__doc__ = host_build_hooks.__doc__
    DefaultTrainer.build_hooks = build_hooks


PATCHES = [
    Patch("final_checkpoint_before_eval",
          "DefaultTrainer evaluates before it checkpoints: a crash in the final evaluation loses model_final.pth",
          _eval_before_final_checkpoint, _save_final_before_eval, stage="runtime"),
    Patch("named_unreadable_image",
          "a truncated image fails in a DataLoader worker with 'OSError: image file is truncated', no path",
          _read_image_unnamed, _name_unreadable_images, stage="runtime"),
]
