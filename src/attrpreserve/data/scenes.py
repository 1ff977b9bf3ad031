"""Built-in synthetic scenes: textured images with labelled shapes and look-alike distractors.

Every image is drawn from its own random stream, ``SeedSequence([seed, split_index, i])``, so
image ``i`` of a split is the same whatever the number of images asked for, and the splits never
share a stream. Shapes are implicit functions (signed distances) evaluated on the pixel grid; a
pixel belongs to a shape where its signed distance is negative. The mask records, per pixel, the
last shape painted there: an object's class index (1..K), or 0 for the background and for
distractors. Anti-aliasing only blends colours at the edges; it never changes the mask.

See ``docs/scenes.md`` for the design choices.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
import math

import numpy as np

SCENE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "plus", "ring", "star", "diamond", "crescent",
)
"""Object classes; class ``SCENE_CLASSES[k]`` has mask value ``k + 1`` and label index ``k``."""

DISTRACTOR_KINDS: tuple[str, ...] = ("bar", "arc", "corner", "half_disc", "spike")
"""Unlabelled shapes that share local features with the classes (edges, arcs, corners, tips)."""

IGNORE = 255


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene generator. Lengths are fractions of the image side, colours 0..255.

    Attributes
    ----------
    size : int
        Image side in pixels.
    min_objects, max_objects : int
        Number of labelled objects per image, drawn uniformly in this range (0 allowed).
    radius : (float, float)
        Object radius range as a fraction of ``size`` (0.10..0.22 is 6.4..14 px at 64 px).
    n_distractors : (int, int)
        Number of unlabelled distractor shapes per image (inclusive range).
    distractor_radius : (float, float)
        Distractor radius range, fraction of ``size``; same as objects so size gives nothing away.
    min_separation : float
        Object centres are at least ``min_separation * (r_i + r_j)`` apart (when placeable).
    min_visible : float
        Fraction of an object's pixels that must stay visible after occlusion; layouts that break
        it are redrawn, and an object still below it after ``max_tries`` is marked 255 (ignore).
    margin : float
        Object centres stay ``margin * r`` from the border, so objects are mostly inside.
    aspect_jitter : float
        Log-aspect-ratio jitter of every shape (0 keeps shapes isotropic).
    rotate : bool
        Random rotation of every shape.
    texture : float
        Strength (0..1) of the stripe / noise texture inside objects and distractors.
    background : float
        Strength (0..1) of the background pattern (0 is a flat colour).
    min_contrast : float
        Preferred RGB distance between a shape's colour and the canvas it is painted on.
    noise : float
        Standard deviation of the additive Gaussian pixel noise.
    antialias : bool
        Blend colours over a one-pixel edge band (masks stay exact either way).
    max_tries : int
        Layout redraws allowed to satisfy ``min_visible``.
    masks : str
        ``"extent"``: a ring's mask is its filled disc and a crescent's the disc it is cut from,
        so a peak-based score (pointing game) counts a map peaking in the hole as on the
        object, as a person pointing at a ring would; ``"shape"``: only the painted pixels.
    """

    size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    radius: tuple[float, float] = (0.10, 0.22)
    n_distractors: tuple[int, int] = (1, 3)
    distractor_radius: tuple[float, float] = (0.10, 0.22)
    min_separation: float = 0.75
    min_visible: float = 0.5
    margin: float = 0.8
    aspect_jitter: float = 0.15
    rotate: bool = True
    texture: float = 0.35
    background: float = 0.5
    min_contrast: float = 80.0
    noise: float = 6.0
    antialias: bool = True
    max_tries: int = 10
    masks: str = "extent"

    def __post_init__(self):
        def bad(why):
            raise ValueError(f"invalid SceneConfig: {why}")

        if self.size < 8:
            bad(f"size must be >= 8, got {self.size}")
        if not 0 <= self.min_objects <= self.max_objects:
            bad(f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        for name in ("radius", "distractor_radius"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 0.5:
                bad(f"{name} must satisfy 0 < lo <= hi <= 0.5, got {(lo, hi)}")
        lo, hi = self.n_distractors
        if not 0 <= lo <= hi:
            bad(f"n_distractors must satisfy 0 <= lo <= hi, got {(lo, hi)}")
        if not all(0 <= x <= 1 for x in (self.texture, self.background, self.min_visible)):
            bad("texture, background and min_visible must lie in [0, 1]")
        if self.masks not in ("extent", "shape"):
            bad(f"masks must be 'extent' or 'shape', got {self.masks!r}")
        if self.max_tries < 1 or self.noise < 0 or self.margin < 0 or self.aspect_jitter < 0:
            bad("max_tries must be >= 1; noise, margin and aspect_jitter >= 0")

    @classmethod
    def from_string(cls, text: str | None, **overrides) -> "SceneConfig":
        """Build a config from ``"key=value,key=lo-hi,..."`` (as in the spec ``scenes:...``).

        Range fields take ``lo-hi`` or a single value; booleans take 1/0/true/false.
        """
        kwargs = {}
        types = {f.name: f.type for f in fields(cls)}
        for item in filter(None, (text or "").split(",")):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or key not in types:
                raise ValueError(f"bad scenes option {item!r}; known: {', '.join(types)}")
            kwargs[key] = _parse_value(key, types[key], value)
        kwargs.update(overrides)
        return cls(**kwargs)


def _parse_value(key: str, typ: str, value: str):
    """Parse one ``from_string`` value by the field's annotated type."""
    try:
        if typ.startswith("tuple"):
            conv = int if "int" in typ else float
            parts = value.split("-") if "-" in value else [value, value]
            lo, hi = (conv(p) for p in parts)
            return (lo, hi)
        if typ == "bool":
            if value.lower() not in ("1", "0", "true", "false"):
                raise ValueError
            return value.lower() in ("1", "true")
        return {"int": int, "float": float}[typ](value)
    except ValueError:
        raise ValueError(f"bad value {value!r} for scenes option {key!r} ({typ})") from None


# ----------------------------------------------------------------------------- signed distances
# Every function takes local coordinates (u, v) in units of the shape radius (the shape fits in
# the unit disc) and returns the signed distance in the same units (negative inside).


def _box(u, v, hx, hy, cx=0.0, cy=0.0):
    qx, qy = np.abs(u - cx) - hx, np.abs(v - cy) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _polygon(u, v, verts):
    """Exact signed distance to a simple polygon (vertices ``E x 2``), even-odd inside test."""
    vx, vy = verts[:, 0, None, None], verts[:, 1, None, None]
    nxt = np.roll(verts, -1, axis=0)
    ex, ey = nxt[:, 0, None, None] - vx, nxt[:, 1, None, None] - vy
    px, py = u - vx, v - vy
    t = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0, 1)
    d2 = ((px - ex * t) ** 2 + (py - ey * t) ** 2).min(axis=0)
    c1, c2, c3 = v >= vy, v < vy + ey, ex * py > ey * px
    crossings = ((c1 & c2 & c3) | ~(c1 | c2 | c3)).sum(axis=0)
    return np.where(crossings % 2 == 1, -1.0, 1.0) * np.sqrt(d2)


def _regular(n, radius, phase=np.pi / 2):
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star_verts(points=5, outer=1.0, inner=0.45):
    outer_v, inner_v = _regular(points, outer), _regular(points, inner, np.pi / 2 + np.pi / points)
    return np.stack([outer_v, inner_v], axis=1).reshape(-1, 2)


_TRIANGLE = _regular(3, 1.05)
_STAR = _star_verts()
_DIAMOND = np.array([[0.0, 1.0], [0.55, 0.0], [0.0, -1.0], [-0.55, 0.0]])
_SPIKE = np.array([[0.0, 1.0], [0.22, -0.9], [-0.22, -0.9]])


def _arc(u, v, half_angle, ra=0.75, rb=0.2):
    """Ring sector of aperture ``2 * half_angle`` centred on +v (Quilez's exact arc)."""
    s, c = np.sin(half_angle), np.cos(half_angle)
    au = np.abs(u)
    cap = np.hypot(au - s * ra, v - c * ra)
    return np.where(c * au > s * v, cap, np.abs(np.hypot(u, v) - ra)) - rb


_CLASS_SDF = {
    "circle": lambda u, v, p: np.hypot(u, v) - 0.8,
    "square": lambda u, v, p: _box(u, v, 0.72, 0.72),
    "triangle": lambda u, v, p: _polygon(u, v, _TRIANGLE),
    "plus": lambda u, v, p: np.minimum(_box(u, v, 0.95, 0.3), _box(u, v, 0.3, 0.95)),
    "ring": lambda u, v, p: np.abs(np.hypot(u, v) - 0.75) - 0.2,
    "star": lambda u, v, p: _polygon(u, v, _STAR),
    "diamond": lambda u, v, p: _polygon(u, v, _DIAMOND),
    "crescent": lambda u, v, p: np.maximum(np.hypot(u, v) - 0.9, 0.72 - np.hypot(u - 0.4, v)),
}
_DISTRACTOR_SDF = {
    "bar": lambda u, v, p: _box(u, v, 0.9, 0.22),
    "arc": lambda u, v, p: _arc(u, v, np.pi * (0.35 + 0.3 * p)),
    "corner": lambda u, v, p: np.minimum(
        _box(u, v, 0.6, 0.22, 0.1, -0.5), _box(u, v, 0.22, 0.6, -0.5, 0.1)),
    "half_disc": lambda u, v, p: np.maximum(np.hypot(u, v) - 0.85, v),
    "spike": lambda u, v, p: _polygon(u, v, _SPIKE),
}
_SDF = [_CLASS_SDF[k] for k in SCENE_CLASSES] + [_DISTRACTOR_SDF[k] for k in DISTRACTOR_KINDS]
# The extent of shapes with a hole or a bite (``SceneConfig.masks="extent"``): the filled disc.
_EXTENT_SDF = {SCENE_CLASSES.index("ring"): lambda u, v, p: np.hypot(u, v) - 0.95,
               SCENE_CLASSES.index("crescent"): lambda u, v, p: np.hypot(u, v) - 0.9}
_N_CLASSES = len(SCENE_CLASSES)


# ----------------------------------------------------------------------------- items and layout


@dataclass
class Item:
    """One shape to paint. ``kind < len(SCENE_CLASSES)`` is an object class, above a distractor.

    ``label`` is the mask value it writes (class index + 1, or 0 for a distractor); ``r`` is the
    radius in pixels; ``param`` in [0, 1] is a shape-specific variation (e.g. arc aperture).
    """

    kind: int
    label: int
    cx: float
    cy: float
    r: float
    angle: float = 0.0
    aspect: float = 1.0
    param: float = 0.5


def item_sdf(item: Item, size: int, extent: bool = False
             ) -> tuple[tuple[slice, slice], np.ndarray]:
    """Signed distance (pixels) of ``item`` over its bounding box; returns (box slices, sdf).

    ``extent``: of the item's extent (a ring's filled disc, see ``SceneConfig.masks``).

    Pixel ``(y, x)`` has its centre at ``(y + 0.5, x + 0.5)``. Only the bounding box is
    evaluated, which keeps rendering fast.
    """
    reach = item.r * max(item.aspect, 1 / item.aspect) + 2
    y0, x0 = (min(max(math.floor(c - reach), 0), size) for c in (item.cy, item.cx))
    y1, x1 = (min(max(math.ceil(c + reach), 0), size) for c in (item.cy, item.cx))
    y = (np.arange(y0, y1) + (0.5 - item.cy)).astype(np.float32)[:, None]
    x = (np.arange(x0, x1) + (0.5 - item.cx)).astype(np.float32)[None, :]
    c, s = math.cos(item.angle), math.sin(item.angle)
    sx, sy = item.r * item.aspect, item.r / item.aspect
    u, v = (c * x + s * y) / sx, (c * y - s * x) / sy
    shape = _EXTENT_SDF.get(item.kind, _SDF[item.kind]) if extent else _SDF[item.kind]
    sdf = shape(u, v, item.param) * item.r
    return (slice(y0, y1), slice(x0, x1)), sdf.astype(np.float32)


def _sample_items(rng: np.random.Generator, cfg: SceneConfig) -> list[Item]:
    """Draw objects (spread apart) and distractors (anywhere), then shuffle the paint order."""
    size = cfg.size
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    n_dis = int(rng.integers(cfg.n_distractors[0], cfg.n_distractors[1] + 1))
    items = []
    for _ in range(n_obj):
        r = rng.uniform(*cfg.radius) * size
        for _try in range(20):
            edge = min(cfg.margin * r, size / 2)
            cx, cy = rng.uniform(edge, size - edge, size=2)
            if all(np.hypot(cx - o.cx, cy - o.cy) >= cfg.min_separation * (r + o.r) for o in items):
                break
        kind = int(rng.integers(_N_CLASSES))
        items.append(Item(kind, kind + 1, cx, cy, r, *_pose(rng, cfg)))
    for _ in range(n_dis):
        r = rng.uniform(*cfg.distractor_radius) * size
        cx, cy = rng.uniform(0.5 * r, size - 0.5 * r, size=2)
        kind = _N_CLASSES + int(rng.integers(len(DISTRACTOR_KINDS)))
        items.append(Item(kind, 0, cx, cy, r, *_pose(rng, cfg)))
    return [items[j] for j in rng.permutation(len(items))]


def _pose(rng, cfg):
    angle = rng.uniform(0, 2 * np.pi) if cfg.rotate else 0.0
    aspect = float(np.exp(rng.uniform(-cfg.aspect_jitter, cfg.aspect_jitter)))
    return angle, aspect, rng.uniform()


def _ownership(sdfs, size):
    """Index of the last item covering each pixel (-1: background), and each item's area."""
    owner = np.full((size, size), -1, dtype=np.int16)
    areas = []
    for j, (box, sdf) in enumerate(sdfs):
        inside = sdf < 0
        owner[box][inside] = j
        areas.append(int(inside.sum()))
    return owner, areas


def _layout(rng, cfg):
    """Sample a layout whose objects stay ``min_visible`` visible; returns items, sdfs, mask."""
    for _ in range(cfg.max_tries):
        items = _sample_items(rng, cfg)
        sdfs = [item_sdf(it, cfg.size) for it in items]
        owner, areas = _ownership(sdfs, cfg.size)
        visible = np.bincount(owner.ravel() + 1, minlength=len(items) + 1)[1:]
        weak = [j for j, it in enumerate(items)
                if it.label and visible[j] < max(cfg.min_visible * areas[j], 1)]
        if not weak:
            break
    labels = np.array([0] + [it.label for it in items], dtype=np.uint8)
    labels[[j + 1 for j in weak]] = IGNORE
    return items, sdfs, labels[_mask_owner(items, sdfs, owner, cfg) + 1]


def _mask_owner(items, sdfs, owner, cfg):
    """The item each mask pixel belongs to: ``owner`` (painted pixels), or with
    ``cfg.masks == "extent"`` the last item whose extent covers it."""
    if cfg.masks == "shape" or not any(it.kind in _EXTENT_SDF for it in items):
        return owner
    extents = [item_sdf(it, cfg.size, extent=True) if it.kind in _EXTENT_SDF else sd
               for it, sd in zip(items, sdfs)]
    return _ownership(extents, cfg.size)[0]


# ----------------------------------------------------------------------------- painting


@lru_cache(maxsize=64)
def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear-interpolation matrix (n_out x n_in) that stretches a coarse grid over n_out pixels."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    w = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] += 1 - w
    if n_in > 1:
        m[np.arange(n_out), lo + 1] += w
    return m


def _noise_field(rng, size, cells, box=(slice(None), slice(None))):
    """Bilinearly upsampled ``cells x cells`` uniform noise, evaluated over ``box`` only."""
    grid = rng.uniform(0, 1, size=(cells, cells)).astype(np.float32)
    up = _upsample_matrix(size, cells)
    return up[box[0]] @ grid @ up[box[1]].T


def _stripe_field(rng, size, box=(slice(None), slice(None))):
    """Sinusoidal stripes of random orientation, period and phase in [0, 1], over ``box``."""
    theta, period = rng.uniform(0, np.pi), rng.uniform(4, size / 2)
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(size, dtype=np.float32) * np.float32(2 * np.pi / period)
    proj = np.cos(theta) * t[None, box[1]] + np.sin(theta) * t[box[0], None] + phase
    return 0.5 + 0.5 * np.sin(proj)


def _pattern(rng, size):
    """Random mix of a gradient, low-frequency noise and stripes, scaled to [0, 1]."""
    t = np.arange(size, dtype=np.float32) / size
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * t[None, :] + np.sin(theta) * t[:, None]
    w = rng.dirichlet([1.0, 1.0, 1.0])
    field = (w[0] * ramp + w[1] * _noise_field(rng, size, int(rng.integers(3, 7)))
             + w[2] * _stripe_field(rng, size))
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _background(rng, cfg):
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    field = cfg.background * _pattern(rng, cfg.size)
    return c0 + (c1 - c0) * field[..., None]


def _pick_colour(rng, under, min_contrast):
    """Colour of a shape: uniform in RGB, preferring candidates that stand out from ``under``.

    The choice depends only on the canvas, never on the class, so colour carries no class
    information. A fixed number of candidates is drawn to keep the random stream simple.
    """
    cand = rng.uniform(0, 255, size=(6, 3)).astype(np.float32)
    dist = np.linalg.norm(cand - under, axis=1)
    ok = np.flatnonzero(dist >= min_contrast)
    return cand[ok[0]] if ok.size else cand[np.argmax(dist)]


def _paint(rng, canvas, item_sdfs, cfg):
    """Paint shapes in order: a (textured) colour blended with the edge-band alpha."""
    size = cfg.size
    for box, sdf in item_sdfs:
        region = canvas[box]
        inside = sdf < 0
        under = region[inside].mean(axis=0) if inside.any() else region.mean(axis=(0, 1))
        colour = _pick_colour(rng, under, cfg.min_contrast)
        second = rng.uniform(0, 255, size=3).astype(np.float32)
        if rng.uniform() < 0.5:
            field = _noise_field(rng, size, int(rng.integers(4, 9)), box)
        else:
            field = _stripe_field(rng, size, box)
        fill = colour + (second - colour) * (cfg.texture * (field - 0.5))[..., None]
        alpha = np.clip(0.5 - sdf, 0, 1) if cfg.antialias else inside.astype(np.float32)
        region += alpha[..., None] * (fill - region)
    return canvas


def render_scene(rng: np.random.Generator, cfg: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """One scene from ``rng``: (image uint8 H x W x 3, mask uint8 H x W)."""
    items, sdfs, mask = _layout(rng, cfg)
    canvas = _paint(rng, _background(rng, cfg), sdfs, cfg)
    if cfg.noise:
        canvas += cfg.noise * rng.standard_normal(canvas.shape, dtype=np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mask


def render_items(items: list[Item], size: int = 64, seed: int = 0,
                 config: SceneConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paint a hand-built list of items in order (for tests and figures); returns (image, mask).

    The mask follows the same rule as generated scenes: the last item covering a pixel decides.
    """
    cfg = config or SceneConfig(size=size)
    rng = np.random.default_rng(seed)
    sdfs = [item_sdf(it, cfg.size) for it in items]
    owner = _mask_owner(items, sdfs, _ownership(sdfs, cfg.size)[0], cfg)
    labels = np.array([0] + [it.label for it in items], dtype=np.uint8)
    canvas = _paint(rng, _background(rng, cfg), sdfs, cfg)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), labels[owner + 1]


def generate_scenes(n: int, seed: int, split_index: int = 0, config: SceneConfig = SceneConfig(),
                    *, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate scenes ``start .. start + n - 1`` of the stream ``(seed, split_index)``.

    Returns
    -------
    images : uint8 ndarray, n x H x W x 3
    masks : uint8 ndarray, n x H x W
        0 background and distractors, ``k + 1`` for ``SCENE_CLASSES[k]``, 255 for an object left
        too occluded (rare; see ``SceneConfig.min_visible``).
    """
    if n < 0 or seed < 0 or split_index < 0 or start < 0:
        raise ValueError(f"n, seed, split_index and start must be >= 0, got {n}, {seed}, "
                         f"{split_index}, {start}")
    size = config.size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    for j in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, start + j]))
        images[j], masks[j] = render_scene(rng, config)
    return images, masks
