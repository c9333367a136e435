"""Identity-level attribute annotations (Market-1501-attribute, DukeMTMC-attribute) joined to fast-reid readers.

The official ``.mat`` files hold a struct ``<name>.{train,test}``; each split has one ``(1, N)`` field per attribute
plus ``image_index`` (4-digit identity strings = the image file-name prefix). Field ORDER differs between the
splits, so every lookup here is by name. Raw values are 1 = no / first state, 2 = yes / second state (age 1-4),
0 = not annotated (DukeMTMC ``top`` of ids 0370 and 0679). They become 0-based class indices, and 0 becomes
``UNKNOWN`` (-1).
"""
from __future__ import annotations

import glob
import os.path as osp
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import scipy.io

from .base import ExtendedImageDataset, require_dir, require_file, train_label

UNKNOWN = -1  # attribute value of an image/identity without that annotation

SINGLE_STATE = "single_state"  # one meaningful state (present / absent): hat, backpack, bag, handbag, boots
DUAL_STATE = "dual_state"  # two meaningful states: gender, hair, up/top, down, clothes, shoes
MULTICLASS = "multiclass"  # one of several values: age, upper colour, lower colour


@dataclass(frozen=True)
class AttributeSpec:
    """One annotated field. ``values[i]`` names the 0-based value i (raw ``.mat`` value i + 1)."""

    name: str  # field name in the .mat file
    values: tuple[str, ...]
    kind: str  # SINGLE_STATE | DUAL_STATE | MULTICLASS
    group: str  # semantic group; colour fields share one group ("upper_colour" / "lower_colour")


_NO_YES = ("no", "yes")


def colour_specs(prefix: str, colours: Sequence[str], group: str) -> tuple[AttributeSpec, ...]:
    """Colour groups are stored as one binary field per colour (not strictly one-hot in the real files)."""
    return tuple(AttributeSpec(prefix + c, _NO_YES, MULTICLASS, group) for c in colours)


def _column(table: Mapping, field: str, where: str) -> np.ndarray:
    if field not in table:
        raise KeyError(f"{where} has no field '{field}' (fields: {sorted(table)})")
    return np.atleast_1d(np.asarray(table[field])).ravel()


def _identity_ids(raw, where: str) -> list[int]:
    ids = []
    for k, value in enumerate(np.atleast_1d(np.asarray(raw, dtype=object)).ravel()):
        text = str(np.asarray(value).ravel()[0]) if isinstance(value, np.ndarray) else str(value)
        if not text.strip().lstrip("-").isdigit():
            raise ValueError(f"{where}.image_index[{k}] = {text!r} is not an identity number")
        ids.append(int(text))
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"{where}.image_index has duplicated identities {dup}")
    return ids


def load_attribute_mat(path: str, struct_name: str, specs: Sequence[AttributeSpec],
                       splits: Sequence[str] = ("train", "test")) -> dict[str, dict[int, tuple[int, ...]]]:
    """Read an attribute ``.mat`` file -> ``{split: {identity: values}}``, values ordered as ``specs``.

    Values are 0-based (raw - 1); raw 0 (not annotated) -> ``UNKNOWN``. Any other out-of-range value, a missing
    struct/split/field, a length mismatch or an unreadable file raises an error naming file, split, field, id.
    """
    require_file(path, f"attribute annotation '{struct_name}'")
    try:
        mat = scipy.io.loadmat(path, simplify_cells=True)
    except Exception as exc:  # scipy raises several types (MatReadError, ValueError, TypeError...) for bad files
        raise ValueError(f"cannot read attribute file '{path}': {type(exc).__name__}: {exc}") from exc
    if struct_name not in mat:
        found = [k for k in mat if not k.startswith("__")]
        raise KeyError(f"'{path}' has no struct '{struct_name}' (variables: {found})")
    root = mat[struct_name]
    if not isinstance(root, dict):
        raise ValueError(f"'{path}': '{struct_name}' is not a struct with splits {list(splits)}")

    num_values = np.array([len(s.values) for s in specs])
    out: dict[str, dict[int, tuple[int, ...]]] = {}
    for split in splits:
        where = f"'{path}': {struct_name}.{split}"
        if split not in root or not isinstance(root[split], dict):
            raise KeyError(f"'{path}': struct '{struct_name}' has no split '{split}'")
        table = root[split]
        ids = _identity_ids(_column(table, "image_index", where), where)
        columns = []
        for spec in specs:
            col = _column(table, spec.name, where)
            if col.shape[0] != len(ids):
                raise ValueError(f"{where}.{spec.name} has {col.shape[0]} values for {len(ids)} identities")
            numeric = np.asarray(col, dtype=np.float64) if col.dtype.kind in "fiub" else None
            if numeric is None or not np.all(np.isfinite(numeric)) or np.any(numeric != np.round(numeric)):
                bad_at = 0 if numeric is None else int(np.flatnonzero(~np.isfinite(numeric)
                                                                     | (numeric != np.round(numeric)))[0])
                raise ValueError(f"{where}.{spec.name} of identity {ids[bad_at]:04d} is {col[bad_at]}: "
                                 f"attribute values must be whole numbers")
            columns.append(numeric.astype(np.int64))
        raw = np.stack(columns, axis=1) if columns else np.zeros((len(ids), 0), np.int64)
        bad = ~(((raw >= 1) & (raw <= num_values)) | (raw == 0))
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise ValueError(f"{where}.{specs[col].name} of identity {ids[row]:04d} is {raw[row, col]} "
                             f"(expected 1..{num_values[col]}, or 0 = not annotated)")
        values = np.where(raw == 0, UNKNOWN, raw - 1)
        out[split] = {pid: tuple(int(v) for v in row) for pid, row in zip(ids, values)}
    return out


class AttributeReIDDataset(ExtendedImageDataset):
    """Market/Duke-style image folders whose items carry ``extras["attributes"]`` (tuple of ints, ``specs`` order).

    Subclasses set the folder layout, ``attribute_specs``, ``mat_struct`` and which pids have no attributes by
    design. Images without attributes follow two explicit policies (constructor arguments):

    - ``distractors`` (pid ``distractor_pid``, Market's ``0000`` gallery distractors):
      ``"unknown"`` (default) keeps them with every attribute ``UNKNOWN`` (-1), so the gallery and the
      evaluation stay those of fast-reid's reader; ``"drop"`` removes them (a smaller, non-standard gallery).
    - ``junk`` (pid ``junk_pid``, Market's ``-1`` images): ``"drop"`` (default) removes them, exactly as
      fast-reid's Market1501 reader does; ``"unknown"`` keeps them (pid -1, attributes ``UNKNOWN``).

    Any other pid missing from the ``.mat`` split raises an error naming the id, the image and the file.
    """

    attribute_specs: tuple[AttributeSpec, ...] = ()
    mat_struct = ""
    num_cameras = 0
    distractor_pid: int | None = None
    junk_pid: int | None = None
    _name_pattern = re.compile(r"^(-?\d+)_c(\d+)")

    def __init__(self, train_dir: str, query_dir: str, gallery_dir: str, mat_path: str, *,
                 distractors: str = "unknown", junk: str = "drop", **kwargs):
        if distractors not in ("unknown", "drop"):
            raise ValueError(f"distractors must be 'unknown' or 'drop', got {distractors!r}")
        if junk not in ("unknown", "drop"):
            raise ValueError(f"junk must be 'unknown' or 'drop', got {junk!r}")
        self.distractors, self.junk = distractors, junk
        for path, what in ((train_dir, "training images"), (query_dir, "query images"),
                           (gallery_dir, "gallery images")):
            require_dir(path, f"{type(self).__name__} {what}")
        self.mat_path = mat_path
        self.attributes = load_attribute_mat(mat_path, self.mat_struct, self.attribute_specs)
        train = self.process_dir(train_dir, "train", is_train=True)
        query = self.process_dir(query_dir, "test", is_train=False)
        gallery = self.process_dir(gallery_dir, "test", is_train=False)
        super().__init__(train, query, gallery, **kwargs)

    @classmethod
    def attribute_names(cls) -> tuple[str, ...]:
        return tuple(s.name for s in cls.attribute_specs)

    def process_dir(self, dir_path: str, split: str, is_train: bool) -> list[tuple]:
        img_paths = sorted(glob.glob(osp.join(dir_path, "*.jpg")))
        if not img_paths:
            raise FileNotFoundError(f"{type(self).__name__}: no *.jpg images in '{dir_path}'")
        table = self.attributes[split]
        unknown = (UNKNOWN,) * len(self.attribute_specs)
        data = []
        for img_path in img_paths:
            match = self._name_pattern.match(osp.basename(img_path))
            if match is None:
                raise ValueError(f"'{img_path}': file name does not start with '<pid>_c<camera>'")
            pid, cam = int(match.group(1)), int(match.group(2))
            if not 1 <= cam <= self.num_cameras:
                raise ValueError(f"'{img_path}': camera {cam} outside 1..{self.num_cameras}")
            if pid == self.junk_pid and self.junk_pid is not None:
                if self.junk == "drop":
                    continue
                attrs = unknown
            elif pid == self.distractor_pid and self.distractor_pid is not None:
                if self.distractors == "drop":
                    continue
                attrs = unknown
            elif pid in table:
                attrs = table[pid]
            else:
                raise KeyError(f"identity {pid:04d} of image '{img_path}' has no attributes in split "
                               f"'{split}' of '{self.mat_path}'")
            camid = cam - 1
            if is_train:
                pid, camid = train_label(self.dataset_name, pid), train_label(self.dataset_name, camid)
            data.append((img_path, pid, camid, {"attributes": attrs}))
        return data
