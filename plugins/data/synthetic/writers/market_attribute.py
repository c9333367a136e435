"""``market_attribute.mat`` (Market-1501-attribute): struct ``market_attribute`` -> ``train`` / ``test``.

Mirrors the official file: each split is a 1x1 struct of 27 uint8 (1, N) fields (1 = no / first state,
2 = yes / second state, age 1..4) plus ``image_index``, a (1, N) cell of 4-digit id strings, sorted. The field
order of the official train and test structs differs; both orders are kept.
"""
import io
from pathlib import Path

import numpy as np
import scipy.io as sio

TRAIN_FIELDS = ("age", "backpack", "bag", "handbag", "downblack", "downblue", "downbrown", "downgray", "downgreen",
                "downpink", "downpurple", "downwhite", "downyellow", "upblack", "upblue", "upgreen", "upgray",
                "uppurple", "upred", "upwhite", "upyellow", "clothes", "down", "up", "hair", "hat", "gender")
TEST_FIELDS = ("age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender", "upblack",
               "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen", "downblack", "downwhite",
               "downpink", "downpurple", "downyellow", "downgray", "downblue", "downgreen", "downbrown")
# savemat stamps the creation time into the 116-byte text header; a fixed header keeps files byte-identical.
_HEADER = b"MATLAB 5.0 MAT-file, written by the synthetic ReID generator"


def _split_struct(identities, pids, fields) -> dict:
    attrs = [identities[p].market_attributes() for p in sorted(pids)]
    out = {f: np.array([[a[f] for a in attrs]], dtype=np.uint8) for f in fields}
    index = np.empty((1, len(attrs)), dtype=object)
    for i, p in enumerate(sorted(pids)):
        index[0, i] = np.array([f"{p:04d}"])
    out["image_index"] = index
    return out


def write_market_attribute(path: Path, identities, train_pids, test_pids) -> None:
    data = {"market_attribute": {"test": _split_struct(identities, test_pids, TEST_FIELDS),
                                 "train": _split_struct(identities, train_pids, TRAIN_FIELDS)}}
    buf = io.BytesIO()
    sio.savemat(buf, data, format="5", do_compression=False, oned_as="row")
    raw = bytearray(buf.getvalue())
    raw[:116] = _HEADER.ljust(116, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))


class MarketAttributeWriter:
    modalities = ()

    def __init__(self, root: Path, plan, style):
        self.root, self.plan = Path(root), plan

    def add(self, box, images) -> None:
        pass  # identity-level annotation: written once in close()

    def close(self) -> dict:
        write_market_attribute(self.root / "market_attribute.mat", self.plan.identities, self.plan.train_pids,
                               self.plan.test_pids)
        return {"format": "market_attribute", "path": "market_attribute.mat", "images": 0,
                "detail": f"train {len(self.plan.train_pids)} ids, test {len(self.plan.test_pids)} ids, 27 attrs"}
