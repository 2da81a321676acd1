"""A small audiovisual world, deterministic from a seed: things that look and sound, scenes, images, clips, captions.

Each kind of thing has a look (colour and shape in a 16 x 16 quadrant of a 32 x 32 image) and, unless it is
silent, a characteristic sound (pitch, timbre, rhythm or noise band, 16 kHz). A scene has 1-3 visible things; some
scenes also have a sound from off screen. The image shows what is visible; the clip mixes what is audible (visible
sounding things and the off-screen one) over background noise. Captions come from a small grammar with several
phrasings, like human captions: an image caption (what is seen) and a sound caption (what is heard).
"""

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["KINDS", "Kind", "Scene", "ToyWorld", "sources_named"]

RATE = 16000
SIZE = 32


@dataclass(frozen=True)
class Kind:
    name: str
    colour: tuple[int, int, int]
    shape: str
    sound: str | None  # None: silent
    verb: str = ""  # "barks": for sound captions
    gerund: str = ""  # "barking"


KINDS = (
    Kind("dog", (200, 120, 40), "square", "pulses_low", "barks", "barking"),
    Kind("bird", (240, 220, 40), "triangle", "chirp", "sings", "singing"),
    Kind("bell", (230, 180, 0), "circle", "bell", "rings", "ringing"),
    Kind("car", (220, 30, 30), "wide", "engine", "rumbles", "rumbling"),
    Kind("rain", (60, 90, 230), "dots", "noise_high", "falls", "falling"),
    Kind("phone", (30, 200, 200), "tall", "beeps", "beeps", "beeping"),
    Kind("drum", (150, 40, 180), "ring", "thumps", "thumps", "thumping"),
    Kind("tree", (30, 150, 40), "triangle", None),
    Kind("lamp", (250, 250, 200), "tall", None),
    Kind("book", (120, 70, 30), "wide", None),
    Kind("chair", (160, 160, 160), "square", None),
)
AUDIBLE = tuple(k for k in KINDS if k.sound)
QUADRANTS = ((0, 0), (16, 0), (0, 16), (16, 16))


@dataclass
class Scene:
    visible: list[Kind]
    offscreen: list[Kind] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seed: int = 0

    @property
    def audible(self) -> list[Kind]:
        return [k for k in self.visible if k.sound] + self.offscreen


class ToyWorld:
    """Scenes, images, clips and captions from one seed: the same seed gives the same world."""

    def __init__(self, seed: int = 0, offscreen_rate: float = 0.25, noise: float = 0.02):
        self.seed, self.offscreen_rate, self.noise = seed, offscreen_rate, noise

    def scenes(self, count: int, split: str = "train", require_sound: bool = True) -> list[Scene]:
        """`count` scenes; splits draw from separate random streams (no shared scene between train and test)."""
        rng = np.random.default_rng([self.seed, {"train": 0, "align": 1, "prefix": 2, "test": 3}[split]])
        scenes = []
        while len(scenes) < count:
            n = int(rng.integers(1, 4))
            visible = [KINDS[i] for i in rng.choice(len(KINDS), size=n, replace=False)]
            offscreen = []
            if rng.random() < self.offscreen_rate:
                candidates = [k for k in AUDIBLE if k not in visible]
                offscreen = [candidates[int(rng.integers(len(candidates)))]]
            scene = Scene(visible, offscreen, list(rng.choice(4, size=n, replace=False)),
                          seed=int(rng.integers(2**31)))
            if require_sound and not scene.audible:
                continue
            scenes.append(scene)
        return scenes

    # ---- the two modalities ----------------------------------------------------------------------------------

    def image(self, scene: Scene) -> Image.Image:
        rng = np.random.default_rng(scene.seed)
        pixels = rng.normal(110, 12, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for kind, quadrant in zip(scene.visible, scene.positions, strict=True):
            x, y = QUADRANTS[quadrant]
            _draw(draw, kind, x, y)
        return image

    def clip(self, scene: Scene, seconds: float = 1.0) -> np.ndarray:
        rng = np.random.default_rng(scene.seed + 1)
        t = np.arange(int(seconds * RATE)) / RATE
        mix = self.noise * rng.standard_normal(len(t))
        for kind in scene.audible:
            mix += _sound(kind.sound, t, rng)
        return (mix / max(1.0, np.abs(mix).max())).astype(np.float32)

    # ---- captions ---------------------------------------------------------------------------------------------

    def image_caption(self, scene: Scene, rng: np.random.Generator) -> str:
        names = [f"a {k.name}" for k in scene.visible]
        templates = ("{things}", "there is {things}", "the image shows {things}", "{things} in the scene")
        return templates[int(rng.integers(len(templates)))].format(things=_join(names))

    def sound_caption(self, kinds: list[Kind], rng: np.random.Generator) -> str:
        """A caption of what `kinds` sound like (the scene's audible things, or the visible sounding ones)."""
        if not kinds:
            return "silence"
        style = int(rng.integers(3))
        if style == 0:
            return _join([f"a {k.name} {k.verb}" for k in kinds])
        if style == 1:
            return "the sound of " + _join([f"a {k.name} {k.gerund}" for k in kinds])
        return "you can hear " + _join([f"a {k.name}" for k in kinds])


def sources_named(caption: str) -> set[str]:
    """The sound sources a caption names (words of the audible kinds)."""
    words = set(caption.lower().replace(",", " ").replace(".", " ").split())
    return {k.name for k in AUDIBLE if k.name in words}


def vocabulary() -> list[str]:
    """Every word the captions, prompts and chat template use."""
    words = set("a and there is the image shows in scene sound of you can hear silence".split())
    words |= set("USER ASSISTANT : . , ? describe this what could sound like be heard Describe that".split())
    for kind in KINDS:
        words |= {kind.name, kind.verb, kind.gerund} - {""}
    return sorted(words)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _draw(draw: ImageDraw.ImageDraw, kind: Kind, x: int, y: int) -> None:
    c = kind.colour
    box = (x + 2, y + 2, x + 13, y + 13)
    if kind.shape == "square":
        draw.rectangle(box, fill=c)
    elif kind.shape == "circle":
        draw.ellipse(box, fill=c)
    elif kind.shape == "triangle":
        draw.polygon([(x + 8, y + 2), (x + 2, y + 13), (x + 13, y + 13)], fill=c)
    elif kind.shape == "wide":
        draw.rectangle((x + 1, y + 5, x + 14, y + 10), fill=c)
    elif kind.shape == "tall":
        draw.rectangle((x + 5, y + 1, x + 10, y + 14), fill=c)
    elif kind.shape == "ring":
        draw.ellipse(box, outline=c, width=3)
    elif kind.shape == "dots":
        for dx in (3, 7, 11):
            for dy in (3, 7, 11):
                draw.rectangle((x + dx, y + dy, x + dx + 1, y + dy + 1), fill=c)


def _sound(kind: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "pulses_low":  # dog: 300 Hz bursts, 4 per second
        return 0.5 * np.sin(2 * np.pi * 300 * t + phase) * (np.sin(2 * np.pi * 4 * t) > 0.3)
    if kind == "chirp":  # bird: fast 2-4 kHz sweeps
        return 0.3 * np.sin(2 * np.pi * (2000 + 2000 * ((t * 6) % 1)) * t + phase)
    if kind == "bell":  # bell: 880 Hz with partials, decaying, struck twice
        envelope = np.exp(-4 * (t % 0.5))
        return 0.4 * envelope * (np.sin(2 * np.pi * 880 * t) + 0.5 * np.sin(2 * np.pi * 2200 * t))
    if kind == "engine":  # car: low noise band
        noise = rng.standard_normal(len(t))
        return 0.6 * np.convolve(noise, np.ones(40) / 40, mode="same") * 3
    if kind == "noise_high":  # rain: high broadband noise
        noise = rng.standard_normal(len(t))
        return 0.15 * (noise - np.convolve(noise, np.ones(4) / 4, mode="same"))
    if kind == "beeps":  # phone: 1.2 kHz beeps, 8 per second
        return 0.3 * np.sin(2 * np.pi * 1200 * t + phase) * ((t * 8) % 1 < 0.4)
    if kind == "thumps":  # drum: decaying 80 Hz hits, 3 per second
        return 0.8 * np.exp(-20 * ((t * 3) % 1) / 3) * np.sin(2 * np.pi * 80 * t)
    raise ValueError(f"unknown sound {kind!r}")
