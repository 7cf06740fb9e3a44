"""Audio and artwork for the demo catalog in development: generated once, from the ``sound``
recipe of each package (or track) in the catalog file, into the instance folder's ``media/``.

Only the standard library (``wave``, ``math``, ``random``, ``array``): files a browser plays
at once, 16 kHz 16-bit WAV, mono, or stereo for binaural beats. Each file is a seamless loop
of ``LOOP_SECONDS`` (frequencies are rounded so that whole cycles fit the loop, noise is
cross-faded over its seam): the demo catalog's 37 tracks take about 9 MB and a few seconds to
make, instead of hours of audio. A track's ``duration_seconds`` stays what the catalog says;
a player loops the file (``<audio loop>``) for as long as the session lasts.

Recipes (``sound:`` on a package applies to its tracks; a track's own ``sound:`` wins):

- ``{kind: binaural, carrier: 200, beat: 8, noise: pink, noise_level: 0.3}``: a sine at
  ``carrier`` Hz in the left ear and at ``carrier + beat`` Hz in the right (the beat is heard
  between the ears: headphones), over optional coloured noise.
- ``{kind: noise, color: white|pink|brown, swell: 0.125}``: coloured noise, optionally
  swelling in loudness ``swell`` times a second (waves).
- ``{kind: tone, frequencies: [136.1, 204], modulation: 40, strike: 3}``: a drone of sines,
  optionally amplitude-modulated at ``modulation`` Hz (isochronic / gamma) or struck like a bowl
  every ``strike`` seconds and left to decay.
- ``{kind: pulse, bpm: 128, frequency: 60}``: a soft kick at ``bpm`` over a low hum.

Artwork: a small SVG per package (``image_path``), a gradient in its category's colours.
Production never serves either: there the files live behind ``MEDIA_BASE_URL``.
"""

from __future__ import annotations

import math
import random
import sys
import wave
import zlib
from array import array
from collections.abc import Iterable
from pathlib import Path

RATE = 16000
LOOP_SECONDS = 6
PEAK = 0.45
CROSSFADE_SECONDS = 0.5
KINDS = ("binaural", "noise", "tone", "pulse")
CATEGORY_COLOURS = {
    "sleep": ("#1b2a49", "#4a5fa8"), "focus": ("#0f3d3e", "#3fa7a3"),
    "relaxation": ("#23422a", "#8cc084"), "meditation": ("#3b2452", "#b48ede"),
    "anxiety": ("#2d3a4a", "#9fb8d0"), "energy": ("#5a1f0f", "#f2a541"),
}
DEFAULT_COLOURS = ("#222831", "#76808f")


class RecipeError(ValueError):
    """A ``sound`` recipe that cannot be rendered; the message names the track."""


def _looping(frequency: float, seconds: int) -> float:
    """The nearest frequency with a whole number of cycles in the loop (no click at the seam)."""
    return max(1, round(frequency * seconds)) / seconds


def _noise(color: str, count: int, rng: random.Random) -> list[float]:
    """``count`` samples of white, pink (Paul Kellet's filter) or brown (leaky integrated)
    noise, roughly within -1..1."""
    out = [0.0] * count
    if color == "white":
        for i in range(count):
            out[i] = rng.uniform(-1.0, 1.0)
    elif color == "pink":
        b0 = b1 = b2 = 0.0
        for i in range(count):
            white = rng.uniform(-1.0, 1.0)
            b0 = 0.99765 * b0 + white * 0.0990460
            b1 = 0.96300 * b1 + white * 0.2965164
            b2 = 0.57000 * b2 + white * 1.0526913
            out[i] = (b0 + b1 + b2 + white * 0.1848) * 0.25
    elif color == "brown":
        level = 0.0
        for i in range(count):
            level = 0.998 * level + rng.uniform(-1.0, 1.0) * 0.06
            out[i] = level * 2.5
    else:
        raise RecipeError(f"unknown noise colour {color!r} (white, pink or brown)")
    return out


def _seamless_noise(color: str, frames: int, rng: random.Random) -> list[float]:
    """Noise whose end runs into its start: the extra tail is cross-faded over the head."""
    fade = int(CROSSFADE_SECONDS * RATE)
    raw = _noise(color, frames + fade, rng)
    for i in range(fade):
        share = i / fade
        raw[i] = raw[i] * share + raw[frames + i] * (1.0 - share)
    return raw[:frames]


def _sine(frequency: float, frames: int, phase: float = 0.0) -> list[float]:
    step = 2.0 * math.pi * frequency / RATE
    return [math.sin(phase + step * i) for i in range(frames)]


def _mix(*layers: tuple[float, list[float]]) -> list[float]:
    frames = len(layers[0][1])
    out = [0.0] * frames
    for gain, samples in layers:
        for i in range(frames):
            out[i] += gain * samples[i]
    return out


def _binaural(recipe: dict, frames: int, seconds: int, rng) -> list[list[float]]:
    carrier = float(recipe.get("carrier", 200))
    beat = float(recipe.get("beat", 8))
    left = _sine(_looping(carrier, seconds), frames)
    right = _sine(_looping(carrier + beat, seconds), frames)
    if recipe.get("noise"):
        level = float(recipe.get("noise_level", 0.3))
        bed = _seamless_noise(recipe["noise"], frames, rng)
        return [_mix((1.0 - level, left), (level, bed)), _mix((1.0 - level, right), (level, bed))]
    return [left, right]


def _noise_track(recipe: dict, frames: int, seconds: int, rng) -> list[list[float]]:
    samples = _seamless_noise(recipe.get("color", "pink"), frames, rng)
    swell = recipe.get("swell")
    if swell:
        step = 2.0 * math.pi * _looping(float(swell), seconds) / RATE
        samples = [s * (0.6 + 0.4 * math.sin(step * i)) for i, s in enumerate(samples)]
    return [samples]


def _tone(recipe: dict, frames: int, seconds: int, rng) -> list[list[float]]:
    frequencies = recipe.get("frequencies") or [recipe.get("frequency", 220)]
    gain = 1.0 / len(frequencies)
    samples = _mix(*[(gain, _sine(_looping(float(f), seconds), frames, rng.uniform(0, 6.28)))
                     for f in frequencies])
    if recipe.get("modulation"):
        step = 2.0 * math.pi * _looping(float(recipe["modulation"]), seconds) / RATE
        samples = [s * (0.5 + 0.5 * math.sin(step * i)) for i, s in enumerate(samples)]
    if recipe.get("strike"):
        period = max(1, round(float(recipe["strike"]) * RATE))
        decay = 4.0 / period
        samples = [s * math.exp(-decay * (i % period)) for i, s in enumerate(samples)]
    return [samples]


def _pulse(recipe: dict, frames: int, seconds: int, rng) -> list[list[float]]:
    beats = max(1, round(float(recipe.get("bpm", 120)) / 60.0 * seconds))
    period = frames / beats
    kick = _looping(float(recipe.get("frequency", 60)), seconds)
    hum = _sine(kick, frames)
    out = [0.0] * frames
    for i in range(frames):
        since = (i % period) / RATE
        out[i] = 0.25 * hum[i] + 0.75 * math.sin(2 * math.pi * 55 * since) * math.exp(-since * 18)
    return [out]


_RENDER = {"binaural": _binaural, "noise": _noise_track, "tone": _tone, "pulse": _pulse}


def render(recipe: dict, seconds: int = LOOP_SECONDS, seed: str = "") -> tuple[int, bytes]:
    """``(channels, frames)``: the recipe as 16-bit little-endian PCM at ``RATE``."""
    kind = recipe.get("kind")
    if kind not in _RENDER:
        raise RecipeError(f"unknown sound kind {kind!r} (one of {', '.join(KINDS)})")
    frames = seconds * RATE
    rng = random.Random(zlib.crc32(seed.encode()))
    channels = _RENDER[kind](recipe, frames, seconds, rng)
    loudest = max(max(abs(s) for s in channel) for channel in channels) or 1.0
    scale = PEAK * 32767 / loudest
    pcm = array("h", bytes(2 * frames * len(channels)))
    for c, channel in enumerate(channels):
        pcm[c::len(channels)] = array("h", (int(s * scale) for s in channel))
    if sys.byteorder == "big":
        pcm.byteswap()
    return len(channels), pcm.tobytes()


def write_wav(path: Path, recipe: dict, seconds: int = LOOP_SECONDS) -> int:
    """Render ``recipe`` into the WAV file ``path`` (written whole, then moved into place);
    its size in bytes."""
    channels, frames = render(recipe, seconds, seed=str(path.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(frames)
    partial.replace(path)
    return path.stat().st_size


def artwork_svg(title: str, category: str) -> str:
    """A package's artwork: its category's gradient and a few soft rings (no text, no script)."""
    dark, light = CATEGORY_COLOURS.get(category, DEFAULT_COLOURS)
    rng = random.Random(zlib.crc32(title.encode()))
    rings = "".join(
        f'<circle cx="{rng.randint(60, 452)}" cy="{rng.randint(60, 452)}" '
        f'r="{rng.randint(40, 180)}" fill="none" stroke="#fff" stroke-opacity="0.18" '
        f'stroke-width="{rng.randint(2, 10)}"/>' for _ in range(5))
    return ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 512 512" width="512" '
            'height="512"><defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">'
            f'<stop offset="0" stop-color="{dark}"/><stop offset="1" stop-color="{light}"/>'
            f'</linearGradient></defs><rect width="512" height="512" fill="url(#g)"/>{rings}'
            '</svg>\n')


def catalog_media(entries: Iterable[dict]) -> list[tuple[str, dict | None, dict]]:
    """What the catalog entries need on disk: ``(relative path, recipe or None for artwork,
    entry)`` for every track with a ``sound`` recipe (its own or its package's) and every
    package with an ``image_path``."""
    wanted = []
    for entry in entries:
        for track in entry.get("tracks") or []:
            recipe = track.get("sound") or entry.get("sound")
            if recipe:
                wanted.append((track["media_path"], recipe, entry))
        if entry.get("image_path"):
            wanted.append((entry["image_path"], None, entry))
    return wanted


def generate(entries: Iterable[dict], root: Path, *, force: bool = False,
             seconds: int = LOOP_SECONDS) -> dict:
    """Write the catalog's audio and artwork under ``root`` (files already there are kept
    unless ``force``). Returns ``{"written": n, "kept": n, "bytes": total size}``."""
    root = Path(root)
    counts = {"written": 0, "kept": 0, "bytes": 0}
    for relative, recipe, entry in catalog_media(entries):
        path = root / relative
        if root.resolve() not in path.resolve().parents:
            raise RecipeError(f"{relative!r} is not a path under the media folder")
        if path.exists() and not force:
            counts["kept"] += 1
            counts["bytes"] += path.stat().st_size
            continue
        if recipe is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(artwork_svg(entry.get("title", ""), entry.get("category", "")),
                            encoding="utf-8")
            size = path.stat().st_size
        else:
            try:
                size = write_wav(path, recipe, seconds)
            except (TypeError, ValueError) as exc:
                raise RecipeError(f"{relative}: {exc}") from exc
        counts["written"] += 1
        counts["bytes"] += size
    return counts
