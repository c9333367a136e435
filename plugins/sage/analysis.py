"""SAGE-reID analyses (paper Appendices E, F, H): gate weights, gate correlation and expert-vs-merged CKA.

Over the target query set:
- E: mean gate weight of every source expert per module type (QKV / Proj / FC1 / FC2, mean over images and the
  blocks) and per layer;
- F: Pearson correlation of the gate weights between experts per module type;
- H: linear CKA between every single expert's and the merged model's module outputs, per module type and layer.

Everything here is cfg-free: a model, a loader of fast-reid batch dicts and, for plain modules, a
``forward_fn(model, batch)``. ``run_analysis`` writes CSV files, a markdown summary and heatmaps.
"""
import csv
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..layers.gated_lora import GatedLoRALinear
from .analysis_tables import MODULE_TYPES, Table, TypeLayerTables, block_index, module_type, tables_from_per_layer

ForwardFn = Callable[[nn.Module, Any], Any]


def gated_layers(model: nn.Module) -> Dict[str, GatedLoRALinear]:
    """``name -> GatedLoRALinear`` of ``model`` in model order; error when there is none."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no GatedLoRALinear layer; pass the stage-2 (gated) model")
    return layers


def _default_forward(model: nn.Module, batch: Any) -> Any:
    return model(batch)


def _run(model: nn.Module, loader: Iterable, forward_fn: Optional[ForwardFn], progress: bool, desc: str,
         after_batch: Callable[[], None]) -> None:
    """Forward every batch in eval mode without gradients, calling ``after_batch`` after each; restores the mode."""
    forward_fn = forward_fn or _default_forward
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                forward_fn(model, batch)
                after_batch()
    finally:
        model.train(was_training)


def collect_gate_weights(model: nn.Module, loader: Iterable, *, forward_fn: Optional[ForwardFn] = None,
                         progress: bool = True) -> Dict[str, np.ndarray]:
    """Gate weights of every gated layer over the loader.

    Returns:
        ``layer name -> (num_images, K)`` float64, rows sum to 1, layers in model order.
    """
    layers = gated_layers(model)
    no_gate = [n for n, m in layers.items() if m.gate is None]
    if no_gate:
        raise ValueError(f"gated layer {no_gate[0]!r} (and {len(no_gate) - 1} more) has no gate: this is LoRA-Avg, "
                         f"whose weights are all 1/K; there is nothing to analyse")
    chunks: Dict[str, List[torch.Tensor]] = {n: [] for n in layers}

    def gather():
        sizes = set()
        for n, m in layers.items():
            g = m.last_gate_weights
            if g is None:
                raise RuntimeError(f"gated layer {n!r} was not run by the forward pass")
            chunks[n].append(g.float().cpu())
            sizes.add(g.shape[0])
            m.last_gate_weights = None  # a layer skipped in the next batch must not report stale weights
        if len(sizes) != 1:
            raise RuntimeError(f"gated layers saw different batch sizes {sorted(sizes)} in one batch")

    for m in layers.values():
        m.last_gate_weights = None
    _run(model, loader, forward_fn, progress, "gate weights", gather)
    if not chunks[next(iter(layers))]:
        raise ValueError("the loader yielded no batch")
    return {n: torch.cat(c).double().numpy() for n, c in chunks.items()}


def mean_gate_table(weights: Mapping[str, np.ndarray], expert_names: Sequence[str]) -> TypeLayerTables:
    """Mean gate weight per expert: ``by_type`` (module types, K), mean over images and blocks, and
    ``per_layer`` (layers, K), mean over images. Rows sum to 1 because every gate's weights do."""
    return tables_from_per_layer({n: np.asarray(w).mean(axis=0) for n, w in weights.items()}, expert_names)


def gate_correlation(weights: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Pearson correlation between the experts' gate weights, per module type.

    Samples are all (image, block) pairs of that module type: every layer's ``(num_images, K)`` weights are
    stacked to ``(num_images * blocks, K)`` and passed to ``np.corrcoef``. Because each row sums to 1, with K = 2
    the two weights are ``g`` and ``1 - g`` and their correlation is exactly -1. An expert whose weight never
    varies (e.g. an untrained gate) has an undefined correlation: NaN.

    Returns:
        ``module type -> (K, K)`` correlation matrix, types in ``MODULE_TYPES`` order.
    """
    by_type: Dict[str, List[np.ndarray]] = {}
    for name, w in weights.items():
        by_type.setdefault(module_type(name), []).append(np.asarray(w, dtype=np.float64))
    out = {}
    for t in [t for t in MODULE_TYPES if t in by_type]:
        samples = np.concatenate(by_type[t])
        with np.errstate(invalid="ignore", divide="ignore"):  # constant columns give NaN, documented above
            out[t] = np.atleast_2d(np.corrcoef(samples, rowvar=False))
    return out


def linear_cka(x: np.ndarray, y: np.ndarray, *, rtol: float = 1e-4) -> float:
    """Linear CKA (Kornblith et al., 2019) of activations x (n, d1) and y (n, d2) of the same n inputs.

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``, in float64.
    In [0, 1]; invariant to orthogonal transforms and isotropic scaling of either side; 1 for x == y.
    The feature-space form costs O(n d1 d2) time and O(d1 d2) memory, which suits n (images) >> d (width).

    Returns NaN when either side does not vary over the inputs (``||Xc||_F <= rtol * ||X||_F``, which absorbs
    float32 rounding): CKA is undefined there. Example: the class-token row of block 0's QKV output, computed
    before the class token has attended to any patch, is the same for every image.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs (n, d1) and (n, d2) arrays, got {x.shape} and {y.shape}")
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    if np.linalg.norm(xc) <= rtol * np.linalg.norm(x) or np.linalg.norm(yc) <= rtol * np.linalg.norm(y):
        return float("nan")
    return float(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def collect_module_outputs(model: nn.Module, loader: Iterable, names: Sequence[str], *,
                           forward_fn: Optional[ForwardFn] = None, reduce: str = "cls",
                           progress: bool = True) -> Dict[str, np.ndarray]:
    """Outputs (B, N, d) of the named modules over the loader, reduced to one row per image.

    Args:
        reduce: "cls" keeps token 0 (the class token), "mean" averages the N tokens.
    Returns:
        ``name -> (num_images, d)`` float32.
    """
    if reduce not in ("cls", "mean"):
        raise ValueError(f"reduce must be 'cls' or 'mean', got {reduce!r}")
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"modules not found in {type(model).__name__}: {missing[:5]}")
    chunks: Dict[str, List[torch.Tensor]] = {n: [] for n in names}

    def hook_for(name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 3:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise RuntimeError(f"module {name!r} output is {shape}, expected (batch, tokens, features)")
            row = output[:, 0] if reduce == "cls" else output.mean(dim=1)
            chunks[name].append(row.detach().float().cpu())
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        _run(model, loader, forward_fn, progress, "module outputs", lambda: None)
    finally:
        for h in handles:
            h.remove()
    empty = [n for n, c in chunks.items() if not c]
    if empty:
        raise RuntimeError(f"modules never ran in the forward pass (or the loader was empty): {empty[:5]}")
    return {n: torch.cat(c).numpy() for n, c in chunks.items()}


def expert_cka_table(merged_outputs: Mapping[str, np.ndarray], expert_outputs: Sequence[Mapping[str, np.ndarray]],
                     expert_names: Sequence[str]) -> TypeLayerTables:
    """Linear CKA between each expert's and the merged model's outputs of the same layer.

    Args:
        merged_outputs: ``layer name -> (n, d)`` of the merged model.
        expert_outputs: K mappings ``layer name -> (n, d)``, one per expert, same names.
    Returns:
        ``by_type`` (module types, K), mean over blocks; ``per_layer`` (layers, K).
    """
    if len(expert_outputs) != len(expert_names):
        raise ValueError(f"{len(expert_outputs)} expert outputs but {len(expert_names)} expert names")
    per_layer = {}
    for name, merged in merged_outputs.items():
        row = []
        for e, outputs in zip(expert_names, expert_outputs):
            if name not in outputs:
                raise KeyError(f"expert {e!r} has no output for layer {name!r}")
            row.append(linear_cka(merged, outputs[name]))
        per_layer[name] = np.array(row)
    return tables_from_per_layer(per_layer, expert_names)


def _write_table_csv(path: Path, table: Table, row_header: str, per_layer: bool = False) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if per_layer:  # block and module type beside the name, so the file sorts and filters without parsing
            w.writerow(["layer", "block", "module_type", *table.cols])
            for r, v in zip(table.rows, table.values.tolist()):
                w.writerow([r, block_index(r), module_type(r), *[repr(x) for x in v]])
        else:
            w.writerow([row_header, *table.cols])
            for r, v in zip(table.rows, table.values.tolist()):
                w.writerow([r, *[repr(x) for x in v]])


def _write_correlation_csv(path: Path, corr: Mapping[str, np.ndarray], expert_names: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["module_type", "expert", *expert_names])
        for t, m in corr.items():
            for e, v in zip(expert_names, m.tolist()):
                w.writerow([t, e, *[repr(x) for x in v]])


def _summary(gate: TypeLayerTables, corr: Mapping[str, np.ndarray], cka: TypeLayerTables,
             expert_names: Sequence[str], num_images: int, plots: Sequence[Path]) -> str:
    parts = [f"# SAGE analysis ({num_images} images, {len(expert_names)} experts)", "",
             "## Mean gate weight per module type (mean over images and blocks)", "",
             gate.by_type.markdown("module"), "",
             "## Pearson correlation of gate weights between experts", ""]
    for t, m in corr.items():
        parts += [f"### {t}", "", Table(m, tuple(expert_names), tuple(expert_names)).markdown("expert"), ""]
    parts += ["## Linear CKA between each expert and the merged model (mean over blocks)", "",
              cka.by_type.markdown("module"), "",
              "Per-layer values: `gate_mean_per_layer.csv`, `cka_per_layer.csv`. A NaN CKA marks a layer whose "
              "output does not vary over the images (left out of the means above).", ""]
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts) + "\n"


def run_analysis(*, merged_model: nn.Module, expert_models: Sequence[nn.Module], expert_names: Sequence[str],
                 loader: Iterable, output_dir: str, forward_fn: Optional[ForwardFn] = None, reduce: str = "cls",
                 layers_per_pass: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Gate statistics and expert-vs-merged CKA over ``loader`` (the target query set); writes the results.

    Writes into ``output_dir``: ``gate_mean.csv``, ``gate_mean_per_layer.csv``, ``gate_correlation.csv``,
    ``cka.csv``, ``cka_per_layer.csv``, ``summary.md`` and the PNG heatmaps; prints the summary.

    Args:
        merged_model: the stage-2 model with ``GatedLoRALinear`` layers (and a gate).
        expert_models: the K single-expert models, in the order of the merged model's experts; their adapted
            layers carry the same module names as the merged model's gated layers.
        expert_names: K labels (e.g. the source datasets).
        loader: iterable of batches; the same order for every model (read several times).
        forward_fn: ``(model, batch) -> anything``; default ``model(batch)``.
        reduce: per-image row of a module output for CKA ("cls" or "mean"). With "cls", block 0's QKV CKA
            is NaN: the class token has not attended to the image yet (see ``linear_cka``).
        layers_per_pass: CKA outputs are held for this many layers at a time (0: all layers in one pass).
            Holding all 48 ViT-B layers costs ~83k float32 per image per model; smaller values trade memory
            for one more pass over the loader per model and group.
    Returns:
        {"gate_mean": TypeLayerTables, "gate_correlation": {type: (K, K)}, "cka": TypeLayerTables,
         "num_images": int, "files": [written paths]}.
    """
    from .analysis_plots import plot_analysis  # matplotlib only when plots are made

    layers = gated_layers(merged_model)
    k = {m.num_experts for m in layers.values()}
    if len(k) != 1 or k != {len(expert_names)} or len(expert_models) != len(expert_names):
        raise ValueError(f"gated layers hold {sorted(k)} experts; got {len(expert_models)} expert models and "
                         f"{len(expert_names)} expert names {list(expert_names)}")
    if len(set(expert_names)) != len(expert_names):
        raise ValueError(f"expert names must be unique, got {list(expert_names)}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    weights = collect_gate_weights(merged_model, loader, forward_fn=forward_fn, progress=progress)
    num_images = next(iter(weights.values())).shape[0]
    gate = mean_gate_table(weights, expert_names)
    corr = gate_correlation(weights)

    names = list(layers)
    step = layers_per_pass if layers_per_pass > 0 else len(names)
    cka_per_layer: Dict[str, np.ndarray] = {}
    for start in range(0, len(names), step):
        group = names[start:start + step]
        kw = dict(forward_fn=forward_fn, reduce=reduce, progress=progress)
        merged = collect_module_outputs(merged_model, loader, group, **kw)
        rows = {n: [] for n in group}
        for model in expert_models:  # one expert's outputs at a time, to bound memory
            expert = collect_module_outputs(model, loader, group, **kw)
            for n in group:
                if expert[n].shape[0] != merged[n].shape[0]:
                    raise RuntimeError(f"layer {n!r}: expert saw {expert[n].shape[0]} images, merged model "
                                       f"{merged[n].shape[0]}; the loader must yield the same images each pass")
                rows[n].append(linear_cka(merged[n], expert[n]))
            del expert
        cka_per_layer.update({n: np.array(v) for n, v in rows.items()})
        del merged
    cka = tables_from_per_layer(cka_per_layer, expert_names)

    files = [out / "gate_mean.csv", out / "gate_mean_per_layer.csv", out / "gate_correlation.csv",
             out / "cka.csv", out / "cka_per_layer.csv"]
    _write_table_csv(files[0], gate.by_type, "module_type")
    _write_table_csv(files[1], gate.per_layer, "layer", per_layer=True)
    _write_correlation_csv(files[2], corr, expert_names)
    _write_table_csv(files[3], cka.by_type, "module_type")
    _write_table_csv(files[4], cka.per_layer, "layer", per_layer=True)
    plots = plot_analysis(out, gate=gate, correlation=corr, cka=cka, expert_names=expert_names)
    summary = _summary(gate, corr, cka, expert_names, num_images, plots)
    (out / "summary.md").write_text(summary)
    print(summary)
    files += [out / "summary.md", *plots]
    return {"gate_mean": gate, "gate_correlation": corr, "cka": cka, "num_images": num_images, "files": files}
