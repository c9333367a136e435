"""Rendering: an identity seen by one camera of one domain -> RGB, near-infrared and thermal images.

A person is first drawn as a *material map* (uint8, one code per body part / garment) at 2x the output size with
OpenCV polygons; the three modalities are then look-up tables over the same map (visible colour, NIR
reflectance, temperature), composited over a domain background and degraded by the domain's optics. Rendering
twice the size and area-downsampling anti-aliases the edges. Everything is vectorised over pixels; the only
per-image Python work is ~25 polygon calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import cv2
import numpy as np

from .domain import CameraStyle, DomainStyle
from .identity import Identity
from .palette import SHOE_COLOURS

SS = 2  # supersampling factor
_SHIFT = 4  # cv2 sub-pixel bits
_F = float(1 << _SHIFT)

BG, SKIN, HAIR, UPPER, PATTERN, LOWER, SHOES, HAT, BACKPACK, BAG, OCCLUDER = range(11)
N_MAT = 11
PERSON_MATERIALS = (SKIN, HAIR, UPPER, PATTERN, LOWER, SHOES, HAT, BACKPACK, BAG)
FRONT, BACK, SIDE = 0, 1, 2


@dataclass(frozen=True)
class Pose:
    view: int       # FRONT / BACK / SIDE
    facing: int     # +1 right, -1 left (side view)
    stride: float   # leg spread, units of person height
    swing: float    # arm swing, units of person height


def sample_pose(camera: CameraStyle, rng: np.random.Generator) -> Pose:
    view = int(rng.choice(3, p=np.asarray(camera.view_probs)))
    stride = float(rng.uniform(0.02, 0.09) if view == SIDE else rng.uniform(0.0, 0.025))
    return Pose(view, 1 if rng.random() < 0.5 else -1, stride, float(rng.uniform(-0.06, 0.06)))


class _Canvas:
    """Material map plus the person's frame: (u, v) in person-height units -> pixel (x, y)."""

    def __init__(self, h: int, w: int, cx: float, y0: float, ph: float):
        self.lab = np.zeros((h, w), np.uint8)
        self.cx, self.y0, self.ph = cx, y0, ph

    def _pts(self, uv: Sequence[Sequence[float]]) -> np.ndarray:
        uv = np.asarray(uv, np.float64)
        xy = np.stack([self.cx + uv[:, 1] * self.ph, self.y0 + uv[:, 0] * self.ph], 1)
        return np.round(xy * _F).astype(np.int32)

    def poly(self, uv, mat: int) -> None:
        cv2.fillPoly(self.lab, [self._pts(uv)], int(mat), cv2.LINE_8, _SHIFT)

    def ellipse(self, u: float, v: float, ru: float, rv: float, mat: int) -> None:
        c = self._pts([(u, v)])[0]
        axes = (max(1, int(round(rv * self.ph * _F))), max(1, int(round(ru * self.ph * _F))))
        cv2.ellipse(self.lab, (int(c[0]), int(c[1])), axes, 0.0, 0.0, 360.0, int(mat), -1, cv2.LINE_8, _SHIFT)

    def line(self, uv0, uv1, width: float, mat: int) -> None:
        p = self._pts([uv0, uv1])
        cv2.line(self.lab, tuple(map(int, p[0])), tuple(map(int, p[1])), int(mat),
                 max(1, int(round(width * self.ph))), cv2.LINE_8, _SHIFT)

    def quad_limb(self, u0, v0, u1, v1, w0, w1, mat: int) -> None:
        """A tapered limb from (u0, v0) (half-width w0) to (u1, v1) (half-width w1)."""
        d = np.array([u1 - u0, v1 - v0])
        n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9)  # normal in (u, v)
        self.poly([(u0 + n[0] * w0, v0 + n[1] * w0), (u1 + n[0] * w1, v1 + n[1] * w1),
                   (u1 - n[0] * w1, v1 - n[1] * w1), (u0 - n[0] * w0, v0 - n[1] * w0)], mat)


def draw_person(cv: _Canvas, idt: Identity, pose: Pose) -> None:
    """Paint the person's materials into ``cv.lab`` (painter's order, view dependent)."""
    side = pose.view == SIDE
    wf = 0.55 if side else 1.0
    f = pose.facing
    sh, hip, tor = idt.shoulder * wf, idt.hip * wf, idt.torso
    hu, hr = idt.head * 1.15, idt.head
    # -- behind the body
    if side and idt.backpack:
        cv.poly([(0.17, -f * sh * 0.8), (0.17, -f * (sh + 0.075)), (0.43, -f * (sh + 0.08)),
                 (0.43, -f * sh * 0.8)], BACKPACK)
    if idt.long_hair and pose.view != BACK:
        cv.poly([(hu, -hr * 0.95), (hu, hr * 0.95), (0.27, hr * 1.05), (0.27, -hr * 1.05)], HAIR)
    # -- legs (skin first, clothing over it)
    for i in (-1, 1):
        vh = i * hip * 0.5
        vf = i * pose.stride if side else i * (hip * 0.55 + pose.stride)
        cv.quad_limb(tor - 0.01, vh, 0.955, vf, 0.042 * (0.8 if side else 1), 0.024, SKIN)
        cover = None
        if not idt.dress:
            cover = 0.68 if idt.short_lower else 0.955
        if cover is not None:
            t = (cover - tor) / (0.955 - tor)
            cv.quad_limb(tor - 0.01, vh, cover, vh + t * (vf - vh), 0.044 * (0.8 if side else 1),
                         0.044 - t * 0.018, LOWER)
        shoe_v = vf + (f * 0.02 if side else 0.0)
        cv.ellipse(0.97, shoe_v, 0.022, 0.035 if side else 0.028, SHOES)
    if idt.dress:
        end = 0.7 if idt.short_lower else 0.86
        cv.poly([(tor - 0.05, -hip * 1.05), (tor - 0.05, hip * 1.05), (end, hip * 1.7 + pose.stride),
                 (end, -hip * 1.7 - pose.stride)], LOWER)
    else:
        cv.poly([(tor - 0.04, -hip * 1.05), (tor - 0.04, hip * 1.05), (tor + 0.06, hip * 1.0),
                 (tor + 0.06, -hip * 1.0)], LOWER)
    # -- torso and its pattern
    cv.poly([(0.135, -0.03), (0.135, 0.03), (0.17, 0.03), (0.17, -0.03)], SKIN)  # neck
    torso = [(0.155, -sh), (0.155, sh), (tor, hip * 1.08), (tor, -hip * 1.08)]
    cv.poly(torso, UPPER)
    top, bot = int(cv.y0 + 0.155 * cv.ph), int(cv.y0 + tor * cv.ph)
    if idt.pattern == "stripes":
        lo, hi = max(top, 0), min(bot, cv.lab.shape[0])
        if hi > lo:
            rows = np.arange(lo, hi)
            on = ((rows - top) / (idt.stripe_period * cv.ph)) % 1.0 < 0.5
            band = cv.lab[lo:hi]
            band[(band == UPPER) & on[:, None]] = PATTERN
    elif idt.pattern == "two_tone":
        lo, hi = max(top, 0), min(int(cv.y0 + 0.26 * cv.ph), cv.lab.shape[0])
        if hi > lo:
            band = cv.lab[lo:hi]
            band[band == UPPER] = PATTERN
    elif idt.pattern == "logo" and pose.view == FRONT:
        cv.poly([(0.22, -0.035), (0.22, 0.035), (0.3, 0.035), (0.3, -0.035)], PATTERN)
    # -- what is worn on the torso
    if idt.backpack and pose.view == BACK:
        cv.poly([(0.18, -sh * 0.78), (0.18, sh * 0.78), (0.44, sh * 0.8), (0.44, -sh * 0.8)], BACKPACK)
    elif idt.backpack and pose.view == FRONT:
        for i in (-1, 1):
            cv.line((0.16, i * sh * 0.6), (0.36, i * sh * 0.55), 0.02, BACKPACK)
    if idt.long_hair and pose.view == BACK:
        cv.poly([(hu, -hr * 0.95), (hu, hr * 0.95), (0.28, hr * 1.05), (0.28, -hr * 1.05)], HAIR)
    # -- arms
    arms = (f,) if side else (-1, 1)
    for i in arms:
        v0 = i * sh * (0.5 if side else 0.92)
        v1 = (f * pose.swing * 1.5) if side else i * (sh + 0.025) + pose.swing * 0.3
        cv.quad_limb(0.165, v0, 0.5, v1, 0.032, 0.022, SKIN)
        cover = 0.27 if idt.short_sleeve else 0.47
        t = (cover - 0.165) / (0.5 - 0.165)
        cv.quad_limb(0.165, v0, cover, v0 + t * (v1 - v0), 0.036, 0.036 - 0.01 * t, UPPER)
        cv.ellipse(0.51, v1, 0.018, 0.016, SKIN)
    # -- bags
    if idt.bag:
        s = 1 if pose.view != SIDE else -f
        if not side:
            cv.line((0.16, -s * sh * 0.7), (0.45, s * (hip + 0.03)), 0.012, BAG)
        cv.poly([(0.42, s * (hip + 0.015)), (0.42, s * (hip + 0.085)), (0.53, s * (hip + 0.085)),
                 (0.53, s * (hip + 0.015))], BAG)
    if idt.handbag:
        i = arms[-1]
        v1 = (f * pose.swing * 1.5) if side else i * (sh + 0.025) + pose.swing * 0.3
        cv.poly([(0.52, v1 - 0.03), (0.52, v1 + 0.03), (0.6, v1 + 0.035), (0.6, v1 - 0.035)], BAG)
    # -- head, hair, hat
    cv.ellipse(hu, 0.0, hr, hr * 0.8, HAIR)
    if pose.view == FRONT:
        cv.ellipse(hu + hr * 0.18, 0.0, hr * 0.82, hr * 0.7, SKIN)
    elif side:
        cv.ellipse(hu + hr * 0.15, f * hr * 0.25, hr * 0.8, hr * 0.58, SKIN)
    if idt.hat:
        cv.ellipse(hu - hr * 0.45, 0.0, hr * 0.62, hr * 0.9, HAT)
        cv.poly([(hu - hr * 0.35, -hr * 1.05), (hu - hr * 0.35, hr * 1.05), (hu - hr * 0.15, hr * 1.05),
                 (hu - hr * 0.15, -hr * 1.05)], HAT)


def _low_freq(rng: np.random.Generator, h: int, w: int, cell: int = 16) -> np.ndarray:
    """Smooth random field in [0, 1] (cubic upsampling of a coarse grid)."""
    g = rng.random((h // cell + 3, w // cell + 3)).astype(np.float32)
    return np.clip(cv2.resize(g, (w + 3 * cell, h + 3 * cell), interpolation=cv2.INTER_CUBIC)[:h, :w], 0, 1)


def background(style: DomainStyle, cam: CameraStyle, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 RGB in 0..255: the domain's scene type in this camera's colours."""
    cols = np.asarray(style.bg_colours, np.float32)
    tint = 1.0 + 0.18 * cam.bg_shift * np.array([1.0, -0.5, -1.0], np.float32)
    cols = np.clip(cols * tint, 0, 255)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    horizon = h * float(rng.uniform(0.45, 0.62))
    tex = _low_freq(rng, h, w)[..., None]
    ground = (yy > horizon)[..., None]
    if style.background == "street":
        img = np.where(ground, cols[2], cols[0]) * (0.85 + 0.3 * tex)
        for _ in range(int(rng.integers(2, 5))):  # facades / windows / shop signs
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, int(horizon)))
            img[y0:y0 + int(rng.integers(6, 30)), x0:x0 + int(rng.integers(6, 40))] = cols[1] * rng.uniform(0.7, 1.2)
        img[(np.abs((xx - w / 2) * (yy - horizon + 1) / h) % 24 < 1.2)[..., None].repeat(3, 2) & ground] *= 0.8
    elif style.background == "indoor":
        img = np.broadcast_to(cols[0], (h, w, 3)).astype(np.float32) * (0.92 + 0.16 * tex)
        tile = max(4, int(rng.integers(10, 20)))
        depth = np.maximum(yy - horizon, 1.0)
        checker = ((np.floor(xx / tile * (h / 2) / (depth + h / 4)) + np.floor(depth / tile * 2)) % 2)[..., None]
        img = np.where(ground, np.where(checker > 0, cols[1], cols[2]), img)
        band = int(horizon) - int(rng.integers(4, 12))
        img[max(band, 0):int(horizon)] = cols[1] * 0.8
    elif style.background == "park":
        leaves = _low_freq(rng, h, w, cell=6)[..., None]
        img = cols[0] * (0.6 + 0.8 * leaves) * (1 - ground) + cols[2] * (0.8 + 0.3 * tex) * ground
        for _ in range(int(rng.integers(1, 4))):  # tree trunks
            x0 = int(rng.integers(0, w))
            img[:int(horizon) + 6, x0:x0 + int(rng.integers(4, 10))] = np.array([70, 50, 35], np.float32)
    elif style.background == "night":
        img = cols[0] * (0.7 + 0.6 * tex) * np.where(ground, 0.8, 1.0)
        for _ in range(int(rng.integers(1, 3))):  # lamps
            lx, ly = float(rng.uniform(0, w)), float(rng.uniform(0, horizon))
            blob = np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * (0.08 * h) ** 2))[..., None]
            img = img + blob * np.array([255, 220, 150], np.float32)
    else:
        raise ValueError(f"unknown background kind '{style.background}' (expected one of street/indoor/park/night)")
    return np.clip(img, 0, 255).astype(np.float32)


def _degrade(x: np.ndarray, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    if blur > 0.3:
        x = cv2.GaussianBlur(x, (0, 0), blur)
    if noise > 0:
        x = x + rng.normal(0.0, noise, x.shape).astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def render(idt: Identity | None, style: DomainStyle, cam: CameraStyle, rng: np.random.Generator, height: int,
           width: int, modalities: Sequence[str] = ("rgb",), kind: str = "person") -> Dict[str, np.ndarray]:
    """Render one detection box.

    kind: "person" (a normal box), "junk" (a badly cropped part of the person, Market's -1 boxes) or
    "distractor" (background only, Market's 0000 boxes; ``idt`` may be None).
    Returns {"rgb"|"ni"|"ti": (height, width, 3) uint8 RGB, "mask": (height, width) float32 person coverage}.
    """
    H, W = height * SS, width * SS
    scale = float(rng.uniform(*style.scale)) * cam.scale
    base = scale * H
    bottom = (H + base) / 2
    if kind == "junk":
        base *= float(rng.uniform(1.8, 2.6))
        bottom = H * float(rng.uniform(1.2, 2.0))
    elif rng.random() < style.cut_prob:
        bottom += base * float(rng.choice([0.12, -0.06]))  # feet cut (box too high) or head cut (too low)
    ph = base * (idt.height if idt is not None else 1.0)
    cx = W / 2 + style.shift * W * float(rng.uniform(-1, 1))
    cv = _Canvas(H, W, cx, bottom - ph, ph)
    pose = sample_pose(cam, rng)
    if kind != "distractor":
        if idt is None:
            raise ValueError(f"render(kind='{kind}') needs an identity")
        draw_person(cv, idt, pose)
    if rng.random() < style.occlusion or kind == "distractor":
        # A partial occluder (another pedestrian's body, a pole, a car): from the bottom or one side.
        if rng.random() < 0.5:
            y0 = int(H * rng.uniform(0.6, 0.8))
            cv.lab[y0:] = OCCLUDER
        else:
            wd = int(W * rng.uniform(0.2, 0.4))
            if rng.random() < 0.5:
                cv.lab[:, :wd] = OCCLUDER
            else:
                cv.lab[:, W - wd:] = OCCLUDER
    lab = cv.lab
    person = np.isin(lab, PERSON_MATERIALS)
    xx = np.arange(W, dtype=np.float32)[None, :]
    rel = (xx - cx) / max(idt.shoulder * ph * 1.6 if idt is not None else W / 4, 1.0)
    shade = np.clip(1.0 - 0.25 * rel ** 2, 0.6, 1.0) * (1.0 + 0.15 * cam.light_dir * np.clip(rel, -1, 1))
    shade = np.broadcast_to(shade, (H, W)).astype(np.float32)
    occ_rgb = np.asarray(style.bg_colours[int(rng.integers(len(style.bg_colours)))], np.float32)
    occ_rgb = np.clip(occ_rgb * rng.uniform(0.4, 1.3, 3), 0, 255)
    bg = background(style, cam, rng, H, W)
    out: Dict[str, np.ndarray] = {}
    down = lambda a: cv2.resize(a, (width, height), interpolation=cv2.INTER_AREA)  # noqa: E731
    out["mask"] = down(person.astype(np.float32))

    if "rgb" in modalities:
        lut = np.zeros((N_MAT, 3), np.float32)
        if idt is not None:
            lut[SKIN], lut[HAIR], lut[UPPER] = idt.skin_rgb, idt.hair_rgb, idt.upper_rgb
            lut[PATTERN], lut[LOWER], lut[SHOES] = idt.pattern_rgb, idt.lower_rgb, SHOE_COLOURS[idt.shoe_colour]
            lut[HAT], lut[BACKPACK], lut[BAG] = idt.hat_rgb, idt.accessory_rgb, np.asarray(idt.accessory_rgb) * 0.8
        lut[OCCLUDER] = occ_rgb
        img = np.where(person[..., None], lut[lab] * shade[..., None], bg)
        img = np.where((lab == OCCLUDER)[..., None], occ_rgb * shade[..., None], img)
        x = down(img.astype(np.float32)) / 255.0
        gain = style.gain * cam.gain * float(rng.uniform(0.9, 1.1))
        x = x * gain * np.asarray(style.cast, np.float32) * np.asarray(cam.cast, np.float32)
        grey = x.mean(axis=2, keepdims=True)
        x = grey + style.saturation * (x - grey)
        x = 0.5 + style.contrast * (x - 0.5)
        x = np.clip(x, 0, 1) ** style.gamma
        out["rgb"] = _degrade(x * 255.0, float(rng.uniform(*style.blur)), style.noise, rng)

    if "ni" in modalities:
        # NIR: fabric dyes reflect NIR independently of their visible colour; vegetation is bright.
        lut = np.zeros(N_MAT, np.float32)
        if idt is not None:
            lut[SKIN], lut[HAIR], lut[UPPER] = 0.75, 0.25, idt.nir_upper
            lut[PATTERN], lut[LOWER], lut[SHOES] = 0.5 * idt.nir_upper + 0.35, idt.nir_lower, 0.3
            lut[HAT], lut[BACKPACK], lut[BAG] = 0.5, 0.35, 0.4
        lut[OCCLUDER] = 0.45
        r, g, b = bg[..., 0], bg[..., 1], bg[..., 2]
        nbg = np.clip(0.25 + 0.4 * (0.299 * r + 0.587 * g + 0.114 * b) / 255 + 0.9 * (g - 0.5 * (r + b)) / 255, 0, 1)
        img = np.where(person | (lab == OCCLUDER), lut[lab] * shade, nbg)
        vign = np.exp(-(((xx - W / 2) / W) ** 2 + ((np.arange(H, dtype=np.float32)[:, None] - H / 2) / H) ** 2))
        x = down((img * vign * 255.0 * min(1.3, 0.6 + style.gain * cam.gain * 0.5)).astype(np.float32))
        out["ni"] = np.repeat(_degrade(x, float(rng.uniform(0.5, 1.0)), 4.0, rng)[..., None], 3, axis=2)

    if "ti" in modalities:
        # Thermal: skin is warmest, clothes attenuate body heat (more for long sleeves / trousers), carried
        # objects are at ambient temperature, the background is cool with smooth variation.
        lut = np.zeros(N_MAT, np.float32)
        if idt is not None:
            up = 0.92 - (0.3 if not idt.short_sleeve else 0.2)
            lut[SKIN], lut[HAIR], lut[UPPER], lut[PATTERN] = 0.95, 0.68, up, up - 0.03
            lut[LOWER], lut[SHOES], lut[HAT] = 0.6 if not idt.short_lower else 0.66, 0.45, 0.55
            lut[BACKPACK], lut[BAG] = 0.32, 0.32
        lut[OCCLUDER] = 0.25
        ambient = 0.12 + 0.2 * _low_freq(rng, H, W) + (0.08 if style.background != "night" else 0.0)
        img = np.where(person | (lab == OCCLUDER), lut[lab], ambient)
        x = down((img * 255.0).astype(np.float32))
        out["ti"] = np.repeat(_degrade(x, float(rng.uniform(1.0, 1.6)), 2.5, rng)[..., None], 3, axis=2)
    return out
