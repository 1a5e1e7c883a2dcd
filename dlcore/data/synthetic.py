"""SyntheticScenes: an embedded, procedurally generated segmentation dataset that makes the papers' effects visible.

Every notebook runs offline on it, so it is built to need what PASCAL VOC needs, at 64-128 pixels:

- classes told apart by SHAPE, TEXTURE and CONTEXT, not by colour: every object, the water and the cluttered
  background draw their colours from one shared palette, so a per-pixel colour classifier does badly
  (benchmarks/synthetic_difficulty.py); textures come in families shared by two or three classes, so a small
  window narrows the class down but the shape (seen only with a large field of view on big objects) decides;
  "boat" and "car" share hull shape and texture and differ by context (a boat floats on the water, a car
  stands on dry ground) and by small parts (mast / wheels);
- objects from a few pixels to half the image (> 100x in area), thin parts (poles, star spikes, masts),
  holes (rings), occlusion (objects are painted in order, mostly large first);
- smooth shading (global illumination and per-object gradients) and pixel noise, while object boundaries
  are hard colour edges in the image, as the fully connected CRF (DeepLab v1 Sec. 4) expects;
- a void band (label 255) a few pixels wide centred on every object outline, like the VOC annotations
  (DeepLab's trimap experiment scores pixels near it).

A scene is a pure function of (split, seed, index): generated on the fly with a numpy Generator seeded from
those three numbers, so train and val are different random streams and any item can be re-created.
Rasterisation is vectorised numpy over each object's bounding box: about 4 ms per 128 x 128 scene on one core
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch.utils.data import Dataset

CLASS_NAMES = ["background", "disc", "square", "triangle", "ring", "cross", "pole", "star", "water", "boat", "car"]
(BACKGROUND, DISC, SQUARE, TRIANGLE, RING, CROSS, POLE, STAR, WATER, BOAT, CAR) = range(len(CLASS_NAMES))
IGNORE_INDEX = 255
SPLITS = {"train": 0, "val": 1}
_STREAM_TAG = 0x5CE7E5  # keeps these streams apart from any other user of SeedSequence([seed, ...])

# One shared palette for objects, water and background (RGB, 0..255): colour says nothing about the class.
PALETTE = np.array([
    [200, 60, 50], [60, 150, 70], [60, 90, 190], [220, 190, 60], [150, 80, 170], [70, 170, 180],
    [230, 130, 60], [120, 120, 120], [210, 210, 200], [50, 50, 60], [160, 110, 70], [150, 190, 90],
], dtype=np.float32)

# Texture families, each shared by several classes: texture narrows the class down, shape decides.
SMOOTH, STRIPES, CHECKER, DOTS, BANDS = range(5)
PRIMARY_TEXTURE = {DISC: SMOOTH, RING: SMOOTH, POLE: SMOOTH, SQUARE: CHECKER, STAR: CHECKER,
                   TRIANGLE: STRIPES, CROSS: STRIPES, BOAT: BANDS, CAR: BANDS}
OTHER_TEXTURE_P = 0.25  # an object wears a random texture instead of its class's one this often
TEXTURE_AMP = 1.0  # contrast of the object textures (brightness modulation, x 0.18-0.3)
SIZE_TILT = 0.6  # radius = r_min (r_max / r_min) ** (u ** SIZE_TILT), u uniform: < 1 favours large objects
N_OBJECTS = (3, 8)  # free objects per scene: integers in [low, high)
BACKGROUND_TEXTURE = 0.06  # contrast of the faint large-scale stripes in the background clutter
# Classes drawn as free objects ("vehicle" becomes a boat on the water or a car on dry ground).
_OBJECT_CHOICES = [DISC, SQUARE, TRIANGLE, RING, CROSS, POLE, STAR, "vehicle"]


def _is_whole(x) -> bool:
    """An integer-valued number (not a bool, a str or None: int() would accept "12" or truncate 12.7 silently)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and int(x) == x


def _as_hw(size) -> tuple[int, int]:
    sides = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if len(sides) != 2 or not all(_is_whole(s) for s in sides):
        raise ValueError(f"size must be an int or (height, width) of ints (pixels; --size on the command line), "
                         f"got {size!r}")
    h, w = (int(s) for s in sides)
    if min(h, w) < 16:
        raise ValueError(f"size must be >= 16 pixels a side (objects and their void band need room; --size on the "
                         f"command line), got {size!r}")
    return h, w


def void_width(size) -> int:
    """Width in pixels of the void band: 2 px at 128 (VOC draws ~5 px on ~500 px images), scaled, >= 1."""
    return max(1, round(2 * min(_as_hw(size)) / 128))


class _Canvas:
    """The scene being painted: float image [H,W,3] 0..255 and instance ids [H,W] (0 = background)."""

    def __init__(self, h, w, rng):
        self.h, self.w, self.rng = h, w, rng
        self.s = min(h, w) / 128.0  # pixel quantities are given at 128 and scaled
        self.image = np.zeros((h, w, 3), np.float32)
        self.instances = np.zeros((h, w), np.int32)
        self.classes = [BACKGROUND]  # class of instance id k at position k

    def box(self, cx, cy, extent):
        """Pixel-centre coordinates (dx, dy relative to the centre) of the clipped bounding box, or None."""
        x0, x1 = max(0, int(cx - extent)), min(self.w, int(math.ceil(cx + extent)) + 1)
        y0, y1 = max(0, int(cy - extent)), min(self.h, int(math.ceil(cy + extent)) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        return (slice(y0, y1), slice(x0, x1)), dx, dy

    def pick_colour(self, where):
        """A palette colour (jittered) that stands out from what it covers: 3 candidates, the most distant wins.

        So boundaries are visible edges (the CRF's premise), yet colour carries no class information.
        """
        under = self.image[where][::2, ::2].reshape(-1, 3).mean(axis=0)  # what the box covers, subsampled
        candidates = PALETTE[self.rng.choice(len(PALETTE), 3, replace=False)]
        best = candidates[np.argmax(np.abs(candidates - under).sum(axis=1))]
        return np.clip(best + self.rng.normal(0, 12, 3), 0, 255).astype(np.float32)

    def paint(self, where, inside, colour, shade, cls):
        """Paint one instance: colour * shade on the pixels `inside` of the box `where` (occludes earlier ones)."""
        if not inside.any():
            return
        k = len(self.classes)
        self.classes.append(cls)
        region = self.image[where]
        region[inside] = shade[inside][:, None] * colour[None, :]
        self.instances[where][inside] = k


def _texture(kind, u, v, s, rng):
    """Brightness factor around 1 for texture `kind` on local coordinates u, v (pixels)."""
    period = float(rng.uniform(5, 9) * s)
    phase = float(rng.uniform(0, 2 * math.pi))
    w = 2 * math.pi / max(period, 2.5)
    if kind == SMOOTH:
        return 1.0 + 0.0 * u + 0.0 * v
    if kind == STRIPES:
        return 1.0 + 0.22 * TEXTURE_AMP * np.sin(w * u + phase)
    if kind == CHECKER:
        # tanh softens the squares' edges to ~1 px so the texture's edges stay weaker than object outlines
        return 1.0 + 0.18 * TEXTURE_AMP * np.tanh(4 * np.sin(w * u + phase) * np.sin(w * v + phase))
    if kind == DOTS:
        return 1.0 - 0.3 * TEXTURE_AMP * ((np.sin(w * u + phase) * np.sin(w * v)) > 0.55)
    # BANDS: a two-tone body, lighter above (a hull with its deck), with a thin dark line between
    return np.where(v < 0, 1.12, 0.85) - 0.25 * (np.abs(v) < max(0.6, 0.8 * s))


def _between(rng, a, b):
    """Uniform between a and b in whichever order (numpy's uniform refuses low > high)."""
    return float(a + (b - a) * rng.random())


def _rotate(dx, dy, theta):
    c, s = math.cos(theta), math.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def _shape(cls, u, v, r, rng, s):
    """Inside-mask of a shape of class `cls`, size r (pixels), in rotated local coordinates u, v."""
    if cls == DISC:
        aspect = rng.uniform(1.0, 1.35)
        return (u / r) ** 2 + (v * aspect / r) ** 2 <= 1
    if cls == SQUARE:
        aspect = rng.uniform(1.0, 1.4)
        half = r * 0.8
        return np.maximum(np.abs(u) / half, np.abs(v) * aspect / half) <= 1
    if cls == TRIANGLE:
        angles = np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) + math.pi / 2
        inside = np.ones(np.broadcast(u, v).shape, bool)
        for a in angles:  # equilateral: three half-planes at distance r/2 from the centre
            inside &= (u * math.cos(a) + v * math.sin(a)) <= 0.5 * r
        return inside
    if cls == RING:
        d = np.sqrt(u ** 2 + v ** 2)
        inner = rng.uniform(0.45, 0.7) * r
        return (d <= r) & (d >= max(inner, 0.0)) if r - inner >= 1.5 * s else d <= r
    if cls == CROSS:
        t = rng.uniform(0.22, 0.38) * r
        t = max(t, 1.0 * s)
        return ((np.abs(u) <= t) & (np.abs(v) <= r)) | ((np.abs(v) <= t) & (np.abs(u) <= r))
    if cls == STAR:
        d = np.sqrt(u ** 2 + v ** 2)
        phi = np.arctan2(v, u)
        t = (phi * 5 / (2 * math.pi)) % 1.0
        m = 1 - 2 * np.minimum(t, 1 - t)  # 1 on a spike, 0 between two
        inner = rng.uniform(0.35, 0.5)
        return d <= r * (inner + (1 - inner) * m ** 2.2)  # concave spikes: thin towards the tips
    raise AssertionError(cls)


def _hull(u, v, half_w, half_h):
    """Trapezoid wider at the top (v < 0): the hull shared by boats and cars."""
    t = np.clip((v + half_h) / (2 * half_h), 0, 1)  # 0 at the top edge, 1 at the bottom
    return (np.abs(v) <= half_h) & (np.abs(u) <= half_w * (1.0 - 0.35 * t))


class SceneGenerator:
    """Draws one scene from a numpy Generator; see the module docstring for what is in it."""

    def __init__(self, h, w):
        self.h, self.w = h, w
        self.s = min(h, w) / 128.0
        self.vw = void_width((h, w))
        S = min(h, w)
        self.r_min = max(2.5, 0.025 * S)  # a disc of 3 px radius at 128: ~30 px
        self.r_max = 0.4 * S  # a disc of radius 0.4 S covers half the image
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # ---------------------------------------------------------------- background and water
    def background(self, cv):
        rng, h, w = cv.rng, self.h, self.w
        g = int(rng.integers(2, 5))  # a coarse grid of palette colours, bilinearly upsampled: smooth clutter
        grid = PALETTE[rng.integers(0, len(PALETTE), (g, g))] + rng.normal(0, 15, (g, g, 3)).astype(np.float32)

        def weights(n):
            pos = (np.arange(n, dtype=np.float32) + 0.5) / n * (g - 1)
            lo = np.clip(np.floor(pos).astype(int), 0, g - 2)
            f = pos - lo
            m = np.zeros((n, g), np.float32)
            m[np.arange(n), lo] = 1 - f
            m[np.arange(n), lo + 1] += f
            return m

        rows = np.tensordot(weights(h), grid, axes=(1, 0)).transpose(2, 0, 1)  # [3,h,g]
        cv.image[:] = (rows @ weights(w).T).transpose(1, 2, 0)  # separable bilinear: two small matmuls
        # faint large-scale texture: clutter that is not an object
        theta = rng.uniform(0, math.pi)
        yy, xx = self.yy, self.xx
        period = rng.uniform(12, 30) * self.s
        cv.image *= (1 + BACKGROUND_TEXTURE * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period))[..., None]

    def water(self, cv):
        """A water region at the bottom with a wavy shore line; returns the per-column water level (or None)."""
        rng, h, w = cv.rng, self.h, self.w
        if rng.random() >= 0.5:
            return None
        level = rng.uniform(0.5, 0.85) * h
        amp, period = rng.uniform(0.5, 3) * self.s, rng.uniform(20, 60) * self.s
        xs = np.arange(w, dtype=np.float32) + 0.5
        shore = level + amp * np.sin(2 * math.pi * xs / period + rng.uniform(0, 2 * math.pi))
        ys = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
        inside = ys >= shore[None, :]
        wave = 1 + 0.15 * np.sin(2 * math.pi * (ys + 1.5 * self.s * np.sin(xs[None, :] / (6 * self.s)))
                                 / (rng.uniform(4, 7) * self.s))
        shade = wave * (0.9 + 0.2 * (ys - level) / h)  # deeper is lighter: a smooth gradient
        where = (slice(0, h), slice(0, w))
        cv.paint(where, inside, cv.pick_colour(where), shade.astype(np.float32), WATER)
        return shore

    # ---------------------------------------------------------------- objects
    def radius(self, rng, lo=None, hi=None):
        lo, hi = lo or self.r_min, hi or self.r_max
        # log-uniform, tilted towards large (u^0.75): many small objects, some huge ones that need context
        return float(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * rng.random() ** SIZE_TILT))

    def texture_for(self, cls, rng):
        if rng.random() < OTHER_TEXTURE_P:
            return int(rng.integers(0, 4))  # SMOOTH, STRIPES, CHECKER or DOTS
        return PRIMARY_TEXTURE[cls]

    def shaded(self, cv, kind, u, v, r, rng):
        """Texture times a linear shading gradient across the object."""
        g = rng.uniform(-0.25, 0.25, 2) / max(r, 1.0)
        return (_texture(kind, u, v, self.s, rng) * (1 + g[0] * u + g[1] * v)).astype(np.float32)

    def blob(self, cv, cls, rng):
        r = self.radius(rng)
        cx, cy = rng.uniform(0, self.w), rng.uniform(0, self.h)
        box = cv.box(cx, cy, r + 1)
        if box is None:
            return
        where, dx, dy = box
        u, v = _rotate(dx, dy, rng.uniform(0, 2 * math.pi))
        inside = _shape(cls, u, v, r, rng, self.s)
        kind = self.texture_for(cls, rng)
        shade = self.shaded(cv, kind, u, v, r, rng)
        if cls == DISC and kind == SMOOTH:  # a lit sphere: radial shading
            shade = shade * (1.1 - 0.3 * ((dx ** 2 + dy ** 2) / r ** 2))
        cv.paint(where, inside, cv.pick_colour(where), shade, cls)

    def pole(self, cv, rng, shore):
        """A thin, nearly vertical pole standing on dry ground (its foot above the water line)."""
        length = rng.uniform(0.25, 0.75) * min(self.h, self.w)
        half = max(self.vw + 1, round(rng.uniform(3, 5) * self.s)) / 2  # width 3-5 px at 128: thin, not all void
        fx = rng.uniform(0, self.w)
        ground = shore[min(int(fx), self.w - 1)] if shore is not None else self.h
        fy = _between(rng, min(0.45 * self.h + length * 0.5, ground - 1), ground)
        tilt = rng.normal(0, 0.12)
        cx, cy = fx + math.sin(tilt) * length / 2, fy - math.cos(tilt) * length / 2
        box = cv.box(cx, cy, length / 2 + half + 1)
        if box is None:
            return
        where, dx, dy = box
        u, v = _rotate(dx, dy, tilt)
        inside = (np.abs(u) <= half) & (np.abs(v) <= length / 2)
        shade = (1.0 + 0.15 * v / length + 0.12 * np.tanh(u / max(half, 0.5))).astype(np.float32)
        cv.paint(where, inside, cv.pick_colour(where), shade, POLE)

    def vehicle(self, cv, rng, shore):
        """Same hull for both: a boat (with a mast) floats on the water, a car (with wheels) stands on dry ground."""
        on_water = shore is not None and rng.random() < 0.6
        half_w = self.radius(rng, max(4.0 * self.s, 3.0), 0.4 * min(self.h, self.w))
        half_h = half_w * rng.uniform(0.3, 0.45)
        cx = rng.uniform(0, self.w)
        col = min(max(int(cx), 0), self.w - 1)
        if on_water:
            cls, cy = BOAT, shore[col] + rng.uniform(0.2, 0.7) * half_h  # hull sits in the water line
            cy = min(cy, self.h - 0.3 * half_h)
        else:
            cls = CAR
            top = shore[col] if shore is not None else self.h
            cy = _between(rng, min(0.4 * self.h, top - half_h), top - half_h * 1.4)
        mast = rng.uniform(1.2, 2.2) * half_w if cls == BOAT else 0.0
        box = cv.box(cx, cy, max(half_w, half_h + mast) + 2 * self.s + 1)
        if box is None:
            return
        where, dx, dy = box
        u, v = dx, dy  # upright
        inside = _hull(u, v, half_w, half_h)
        kind = self.texture_for(cls, rng)
        shade = self.shaded(cv, kind, u, v, half_w, rng)
        if cls == BOAT:  # a thin mast rising from the deck
            mw = max(self.vw + 1, round(rng.uniform(2.5, 4) * self.s)) / 2
            mx = rng.uniform(-0.4, 0.4) * half_w
            mast_in = (np.abs(u - mx) <= mw) & (v <= -half_h) & (v >= -half_h - mast)
            inside = inside | mast_in
        else:  # two wheels at the bottom corners, darker
            wr = max(0.3 * half_w * 0.6, 1.5 * self.s)
            for wx in (-0.55 * half_w, 0.55 * half_w):
                wheel = (u - wx) ** 2 + (v - half_h) ** 2 <= wr ** 2
                inside = inside | wheel
                shade = np.where(wheel, 0.45, shade)
        cv.paint(where, inside, cv.pick_colour(where), shade.astype(np.float32), cls)

    # ---------------------------------------------------------------- the scene
    def __call__(self, rng):
        cv = _Canvas(self.h, self.w, rng)
        self.background(cv)
        shore = self.water(cv)
        n = int(rng.integers(*N_OBJECTS))
        chosen = [_OBJECT_CHOICES[i] for i in rng.integers(0, len(_OBJECT_CHOICES), n)]
        # paint order: mostly large first (small objects occlude large ones), shuffled by a random key
        order = rng.permutation(n)
        for i in order:
            c = chosen[i]
            if c == "vehicle":
                self.vehicle(cv, rng, shore)
            elif c == POLE:
                self.pole(cv, rng, shore)
            else:
                self.blob(cv, c, rng)
        # global illumination and sensor noise
        yy = (np.arange(self.h, dtype=np.float32)[:, None] / self.h - 0.5)
        xx = (np.arange(self.w, dtype=np.float32)[None, :] / self.w - 0.5)
        gx, gy = rng.uniform(-0.3, 0.3, 2)
        cv.image *= (1 + gx * xx + gy * yy)[..., None]
        cv.image += 5 * rng.standard_normal(cv.image.shape, dtype=np.float32)
        image = np.clip(cv.image + 0.5, 0, 255).astype(np.uint8)
        instances = cv.instances
        labels = np.asarray(cv.classes, np.int64)[instances]
        labels[void_band(instances, self.vw)] = IGNORE_INDEX
        return image, labels, instances.astype(np.int64)


def void_band(instances: np.ndarray, width: int) -> np.ndarray:
    """bool [H,W]: pixels within a band `width` px wide centred on every instance outline.

    A pixel is void when its (width+1)^2 window (anchored so the band is centred on the edge between two
    pixels) holds two instance ids: exactly `width` pixels across each straight outline.
    """
    k, a = width + 1, width // 2
    h, w = instances.shape
    padded = np.pad(instances, ((a, k - 1 - a), (a, k - 1 - a)), mode="edge")
    hi = padded[:, 0:w].copy()
    lo = padded[:, 0:w].copy()
    for t in range(1, k):  # separable sliding max / min: rows, then columns
        np.maximum(hi, padded[:, t:t + w], out=hi)
        np.minimum(lo, padded[:, t:t + w], out=lo)
    hi2, lo2 = hi[0:h].copy(), lo[0:h].copy()
    for t in range(1, k):
        np.maximum(hi2, hi[t:t + h], out=hi2)
        np.minimum(lo2, lo[t:t + h], out=lo2)
    return hi2 != lo2


class SyntheticScenes(Dataset):
    """Procedural scenes: `ds[i] -> (image uint8 [3,H,W], mask int64 [H,W])`, 255 = void band at boundaries.

    split: "train" or "val" (different random streams: the splits share no scene); n: number of scenes;
    size: int or (height, width), >= 16 (notebooks use 32-128); seed: picks another draw of the same
    distribution. `ds.instances(i)` gives the object instance ids (0 = background) of the same scene.
    Classes: see `CLASS_NAMES` and the module docstring.
    """

    class_names = list(CLASS_NAMES)
    num_classes = len(CLASS_NAMES)
    ignore_index = IGNORE_INDEX

    def __init__(self, split: str = "train", n: int = 1000, size=128, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if not _is_whole(n) or n < 1:
            raise ValueError(f"n, the number of scenes (--n-train / --n-val on the command line), must be an "
                             f"integer >= 1, got {n!r}")
        if not _is_whole(seed) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0 (--seed on the command line), got {seed!r}")
        self.split, self.n, self.seed = split, int(n), int(seed)
        self.height, self.width = _as_hw(size)
        self.size = size
        self.void_width = void_width(size)
        self._generator = SceneGenerator(self.height, self.width)

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        if isinstance(i, torch.Tensor):
            i = int(i)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"SyntheticScenes indices are integers, got {type(i).__name__}")
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} scenes")
        return int(i)

    def rng(self, i: int) -> np.random.Generator:
        """The Generator scene i is drawn from: a pure function of (split, seed, i)."""
        return np.random.default_rng([_STREAM_TAG, SPLITS[self.split], self.seed, self._index(i)])

    def scene(self, i: int) -> dict:
        """Scene i as numpy arrays: image uint8 [H,W,3], labels int64 [H,W], instances int64 [H,W]."""
        image, labels, instances = self._generator(self.rng(i))
        return {"image": image, "labels": labels, "instances": instances}

    def __getitem__(self, i):
        image, labels, _ = self._generator(self.rng(i))
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(labels)

    def instances(self, i: int) -> torch.Tensor:
        """Instance ids int64 [H,W] of scene i (0 = background; every object, water included, its own id)."""
        return torch.from_numpy(self._generator(self.rng(i))[2])

    def __repr__(self) -> str:
        return (f"SyntheticScenes(split={self.split!r}, n={self.n}, size={self.size!r}, seed={self.seed}): "
                f"{self.num_classes} classes incl. background, void band {self.void_width} px")
