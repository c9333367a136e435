"""Element-wise mean of K model state dicts (SAGE stage 2's shared backbone; also the base of every
static merge baseline). A pure function on tensors: no model, no config."""
from typing import Dict, Mapping, Sequence

import torch


def mean_state_dict(state_dicts: Sequence[Mapping[str, torch.Tensor]], *,
                    exclude_prefixes: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """Element-wise mean over K state dicts with identical keys and shapes.

    Keys starting with any of ``exclude_prefixes`` (e.g. classifier heads) are dropped. Floating tensors are
    averaged in float64 and cast back; non-floating tensors (counters) must be equal in all K, else it raises.
    """
    if not state_dicts:
        raise ValueError("mean_state_dict needs at least one state dict")
    keep = [k for k in state_dicts[0] if not any(k.startswith(p) for p in exclude_prefixes)]
    for i, sd in enumerate(state_dicts[1:], start=1):
        mine = {k for k in sd if not any(k.startswith(p) for p in exclude_prefixes)}
        if mine != set(keep):
            diff = sorted(mine ^ set(keep))[:5]
            raise KeyError(f"state dict {i} has different keys than state dict 0 (e.g. {diff})")
    out = {}
    for k in keep:
        tensors = [sd[k] for sd in state_dicts]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            raise ValueError(f"key {k!r} has different shapes across state dicts: {sorted(shapes)}")
        if tensors[0].is_floating_point():
            out[k] = torch.stack([t.detach().double() for t in tensors]).mean(0).to(tensors[0].dtype)
        else:
            if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
                raise ValueError(f"non-floating key {k!r} differs across state dicts; cannot average it")
            out[k] = tensors[0].clone()
    return out
