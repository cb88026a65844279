"""Procedural alphabets of handwritten-looking characters: the built-in default dataset.

It plays the role of Omniglot without any file or download: classes are characters, groups are
alphabets, and every class has several "drawings", each as if drawn by a different person.

Each alphabet has a style (how many strokes, curvy or angular, stroke width, a small library of
stroke shapes it reuses, how often strokes join, loops and dots), so characters of one alphabet
resemble each other more than characters of another; that is what makes alphabet-disjoint
splits meaningful. A character is 1-4 strokes (cubic Bézier curves or polylines through four
control points in the unit square) plus maybe a dot. A drawing perturbs it: affine jitter,
per-control-point noise, stroke length and width changes. Strokes are drawn with PIL at up to 4x
the target size and box-downsampled for anti-aliasing: bright ink (255) on black (0).

Randomness comes from generators seeded by (seed, alphabet) for the style, (seed, alphabet,
character) for the shape and (seed, alphabet, character, "drawings") for the drawings, and each
character draws all its drawings' noise in one fixed-width block; so the same arguments give
byte-identical images, and asking for more drawings keeps the first drawings identical.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from engine.data.imageset import ImageSet, Preprocess, from_arrays
from engine.errors import UserError

MAX_CLASSES = 20000
MAX_DRAWINGS = 1000
# What one request may generate (checked before any work, in glyph_budget): images are rendered one
# by one on the CPU (uninterruptible while it lasts), and the set is held in memory, 3x over for RGB
# while it is built. 100,000 images is 12x the demo's 8,000, about 3x Omniglot's 32,460 drawings.
MAX_IMAGES = 100_000
MAX_BYTES = 1 << 30  # 1 GiB of pixels (the finished set; uint8, size x size x channels each)
CLASSES_PER_ALPHABET = 20  # the default alphabet size, about Omniglot's (1623 chars / 50 alphabets)

MAX_STROKES = 4
_SLOTS = MAX_STROKES + 1  # strokes plus a dot
_PER_SLOT = 8 + 3  # noise per slot: 4 control points x 2, length scale, offset x 2
_NOISE = 7 + _SLOTS * _PER_SLOT  # plus global affine (6) and width (1)

# How much one drawing differs from another; tuned so that pixel nearest-neighbour 5-way 1-shot
# accuracy lands near 0.58 (chance 0.2): learnable, yet far from trivial.
JITTER = dict(rotate=np.deg2rad(8.0), scale=0.07, shear=0.10, shift=0.045, point=0.035, length=0.08, width=0.15)

_T = np.linspace(0.0, 1.0, 14)
_BERNSTEIN = np.stack([(1 - _T) ** 3, 3 * _T * (1 - _T) ** 2, 3 * _T**2 * (1 - _T), _T**3], axis=1)  # (14, 4)


def generate_glyphs(
    classes: int = 200, drawings: int = 20, alphabets: int | None = None, seed: int = 0, prep: Preprocess = Preprocess()
) -> ImageSet:
    """`classes` characters spread evenly over `alphabets` alphabets, `drawings` images each."""
    if not 1 <= classes <= MAX_CLASSES:
        raise UserError(f"glyphs: classes must be between 1 and {MAX_CLASSES}, not {classes}")
    if not 1 <= drawings <= MAX_DRAWINGS:
        raise UserError(f"glyphs: drawings per character must be between 1 and {MAX_DRAWINGS}, not {drawings}")
    channels = prep.channels or 1
    size = prep.resolved_size(channels)
    glyph_budget(classes, drawings, size, channels)
    if alphabets is None:
        alphabets = max(1, round(classes / CLASSES_PER_ALPHABET))
    if not 1 <= alphabets <= classes:
        raise UserError(f"glyphs: alphabets must be between 1 and the number of classes ({classes}), not {alphabets}")
    seed = int(seed) & (2**64 - 1)  # SeedSequence wants a non-negative int; negative seeds still differ
    factor = max(1, min(4, 1024 // size))  # supersampling, with the canvas kept at most ~1024 px

    sizes = [classes // alphabets + (a < classes % alphabets) for a in range(alphabets)]
    a_width, c_width = max(2, len(str(alphabets - 1))), max(3, len(str(max(sizes) - 1)))
    images = np.empty((classes * drawings, size, size), dtype=np.uint8)
    class_names, groups, k = [], [], 0
    for a, count in enumerate(sizes):
        style = _alphabet_style(np.random.default_rng([seed, 0, a]))
        group = f"alphabet{a:0{a_width}d}"
        for c in range(count):
            strokes = _character(np.random.default_rng([seed, 1, a, c]), style)
            noise = np.random.default_rng([seed, 2, a, c]).standard_normal((drawings, _NOISE))
            noise = np.clip(noise, -2.5, 2.5)  # no freak drawings from the normal's tails
            for d, drawing in enumerate(_drawings(strokes, style, noise)):
                images[k * drawings + d] = _render(*drawing, size, factor)
            class_names.append(f"{group}/char{c:0{c_width}d}")
            groups.append(group)
            k += 1
    labels = np.repeat(np.arange(classes, dtype=np.int64), drawings)
    if channels == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    return from_arrays(images, labels, class_names, prep, source="glyphs", groups=groups)


def glyph_budget(classes: int, drawings: int, size: int, channels: int) -> None:
    """Refuse, before any work, a glyph set over MAX_IMAGES images or MAX_BYTES of pixels, saying
    what would fit with the same number of classes."""
    images, per_image = classes * drawings, size * size * channels
    if images <= MAX_IMAGES and images * per_image <= MAX_BYTES:
        return
    fit = min(MAX_IMAGES // classes, MAX_BYTES // (classes * per_image))
    if fit >= 1:
        hint = f"with classes={classes} at most drawings={fit} fit"
    else:
        most = min(MAX_IMAGES, MAX_BYTES // per_image)
        hint = f"even drawings=1 fits at most classes={most}" if most else "choose a smaller image size"
    raise UserError(
        f"glyphs: classes={classes}, drawings={drawings} is {images:,} images of {size}x{size}x{channels} "
        f"({_gib(images * per_image)}); the built-in generator makes at most {MAX_IMAGES:,} images and "
        f"{_gib(MAX_BYTES)} per set: {hint}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _alphabet_style(rng: np.random.Generator) -> dict:
    curvy = rng.random() < 0.6
    # angular scripts turn by a few fixed angles (90 degrees, or 60/120, or 45/135...)
    turns = np.deg2rad(rng.choice([[90, 90], [60, 120], [45, 135], [90, 135], [60, 90]]))
    library, cost = [], []  # stroke shapes this alphabet keeps reusing (local frame around 0)
    for _ in range(int(rng.integers(3, 7))):
        if curvy:
            p0, p3 = np.array([-0.5, 0.0]), np.array([0.5, rng.uniform(-0.3, 0.3)])
            if rng.random() < 0.3:  # a closed loop, teardrop-shaped
                p3 = p0.copy()
                bend = rng.uniform(0.6, 1.1) * rng.choice([-1, 1])
                p1, p2 = np.array([0.4, bend]), np.array([0.4, -bend * 0.2]) + rng.normal(0, 0.15, 2)
                cost.append(3)
            else:  # an arc (bends on one side), an S (both sides) or a hook
                bend = rng.uniform(0.15, 0.8)
                p1 = np.array([-0.2, bend * rng.choice([-1, 1])]) + rng.normal(0, 0.1, 2)
                p2 = np.array([0.2, bend * rng.choice([-1, 1])]) + rng.normal(0, 0.1, 2)
                cost.append(2)
            shape = np.stack([p0, p1, p2, p3])
        else:  # a turtle walk of 1-3 segments; a 2-segment one repeats its corner
            segments = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
            cost.append(segments)
            heading, pts = 0.0, [np.zeros(2)]
            for i in range(segments):
                if i:
                    heading += rng.choice(turns) * rng.choice([-1, 1])
                pts.append(pts[-1] + rng.uniform(0.4, 1.0) * np.array([np.cos(heading), np.sin(heading)]))
            pts = np.stack(pts)
            if segments == 1:  # a straight line: the inner points on it
                pts = np.stack([pts[0], pts[0] * 2 / 3 + pts[1] / 3, pts[0] / 3 + pts[1] * 2 / 3, pts[1]])
            elif segments == 2:
                pts = pts[[0, 1, 1, 2]]
            shape = pts - (pts.min(0) + pts.max(0)) / 2
        library.append(shape)
    stroke_p = np.exp(-(((np.arange(1, MAX_STROKES + 1) - rng.uniform(1.5, 3.5)) / 0.8) ** 2) / 2)
    return {
        "curvy": curvy,
        "library": np.stack(library),
        "cost": cost,
        "budget": rng.uniform(3.5, 7.5),  # how busy a character may get: a sum of stroke costs
        "slant": np.array([[rng.uniform(0.65, 1.0), rng.normal(0, 0.2)], [0.0, 1.0]]),  # narrower, italic
        "stroke_p": stroke_p / stroke_p.sum(),  # how many strokes a character has: 1..4
        # angles strokes prefer (angular scripts: a few fixed directions; curvy ones: anything)
        "angles": rng.uniform(0, np.pi, int(rng.integers(2, 5))),
        "free_angles": curvy and rng.random() < 0.7,
        "join": rng.uniform(0.3, 0.9),  # how often a stroke starts on an earlier one
        "dot": rng.uniform(0.0, 0.4),
        "width": rng.uniform(0.055, 0.09),  # of the image side
    }


def _character(rng: np.random.Generator, style: dict) -> np.ndarray:
    """(S, 4, 2) control points in the unit square; a dot is a stroke with four equal points."""
    n = int(rng.choice(MAX_STROKES, p=style["stroke_p"])) + 1
    strokes, spent = [], 0.0
    for i in range(n):
        pick = rng.integers(len(style["library"]))
        spent += style["cost"][pick]
        if i and spent > style["budget"]:  # keep characters from turning into scribbles
            break
        shape = style["library"][pick] + rng.normal(0, 0.08, (4, 2))
        if style["free_angles"]:
            angle = rng.uniform(0, 2 * np.pi)
        else:
            angle = rng.choice(style["angles"]) + rng.choice([0, np.pi]) + rng.normal(0, 0.1)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = shape * rng.uniform(0.5, 1.0) @ rot.T
        if i and rng.random() < style["join"]:  # start on a random point of an earlier stroke
            prev = strokes[rng.integers(i)]
            anchor = _BERNSTEIN[rng.integers(len(_T))] @ prev
            pts = pts - pts[0] + anchor
        else:
            pts = pts + rng.uniform(0.25, 0.75, 2)
        strokes.append(pts)
    pts = np.stack(strokes) @ style["slant"].T
    # fit the character into the middle of the square, keeping its aspect ratio
    lo, hi = pts.reshape(-1, 2).min(0), pts.reshape(-1, 2).max(0)
    pts = (pts - (lo + hi) / 2) * (0.7 / max((hi - lo).max(), 0.2)) + 0.5
    if rng.random() < style["dot"]:
        dot = rng.uniform(0.15, 0.85, 2)
        pts = np.concatenate([pts, np.broadcast_to(dot, (1, 4, 2))])
    return pts


def _drawings(strokes: np.ndarray, style: dict, noise: np.ndarray):
    """Yield, per drawing, (a list of (M, 2) polylines in unit-square coordinates, pen width)."""
    j, s = JITTER, len(strokes)
    d = len(noise)
    slots = noise[:, 7:].reshape(d, _SLOTS, _PER_SLOT)[:, :s]
    pts = strokes[None] + j["point"] * slots[:, :, :8].reshape(d, s, 4, 2)
    centre = pts.mean(axis=2, keepdims=True)  # longer or shorter strokes, around their middle
    pts = centre + (pts - centre) * (1 + j["length"] * slots[:, :, 8, None, None])
    pts = pts + 0.3 * j["shift"] * slots[:, :, None, 9:11]
    g = noise[:, :7]
    angle, sx, sy = j["rotate"] * g[:, 0], 1 + j["scale"] * g[:, 1], 1 + j["scale"] * g[:, 2]
    cos, sin, shear = np.cos(angle), np.sin(angle), j["shear"] * g[:, 3]
    mat = np.stack(  # rotate @ shear @ scale, per drawing: (D, 2, 2)
        [np.stack([cos * sx, (cos * shear - sin) * sy], -1), np.stack([sin * sx, (sin * shear + cos) * sy], -1)], 1
    )
    pts = np.einsum("dij,dskj->dski", mat, pts - 0.5) + 0.5 + j["shift"] * g[:, None, None, 4:6]
    widths = style["width"] * np.exp(j["width"] * g[:, 6])
    curves = np.einsum("tk,dskc->dstc", _BERNSTEIN, pts) if style["curvy"] else pts
    is_dot = (np.ptp(strokes, axis=1) == 0).all(axis=1)
    for i in range(d):
        yield [pts[i, k, :1] if is_dot[k] else curves[i, k] for k in range(s)], widths[i]


def _render(lines: list[np.ndarray], width: float, size: int, factor: int) -> np.ndarray:
    side = size * factor
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    w = max(width * side, factor)  # at least one output pixel wide, so tiny images stay legible
    r = w / 2
    for pts in lines:
        xy = pts * side
        if len(xy) == 1:  # a dot, a little bigger than the pen
            x, y = xy[0]
            draw.ellipse((x - 1.3 * r, y - 1.3 * r, x + 1.3 * r, y + 1.3 * r), fill=255)
            continue
        draw.line(xy.ravel().tolist(), fill=255, width=int(round(w)))
        for x, y in xy:  # a round pen: round caps and joints (PIL's joint="curve" is much slower)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    if factor > 1:
        img = img.reduce(factor)  # box filter: anti-aliased edges
    return np.asarray(img, dtype=np.uint8)
