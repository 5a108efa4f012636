"""Synthetic camera scenes for the health and tamper tests, encoded to real H.264 with PyAV.

A normal scene is a textured background seen by a slightly shaking camera, a square walking across and
sensor noise; ``then`` switches to another scene (black, frozen, another view, blurred) at ``SWITCH_S``.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import av
import numpy as np

from edgerec.health import HealthThresholds

WIDTH_PX, HEIGHT_PX = 320, 240
FPS = 25
GOP_FRAMES = 10  # a keyframe every 0.4 s keeps the clips short
SWITCH_S = 3.0  # normal scene before the change
CLIP_S = 8.0

# Short durations so that a few seconds of video are enough; the detection levels are the defaults.
FAST = HealthThresholds(
    analysis_interval_s=0.0,
    frozen_after_s=2.0,
    dark_after_s=1.0,
    blurred_after_s=1.0,
    moved_after_s=1.0,
    clear_after_s=1.0,
)

Scene = Callable[[int], np.ndarray]  # frame index -> gray picture


def _smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur through the FFT (numpy only)."""
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    kernel = np.exp(-2.0 * np.pi**2 * sigma_px**2 * (fx**2 + fy**2))
    return np.real(np.fft.ifft2(np.fft.fft2(img) * kernel))


def _world(seed: int) -> np.ndarray:
    """A natural-looking texture (detail at several scales plus some flat objects), larger than a view."""
    rng = np.random.default_rng(seed)
    img = np.zeros((HEIGHT_PX + 40, WIDTH_PX + 40))
    for sigma_px, amplitude in [(32, 30), (8, 15), (2, 10), (0.7, 6)]:
        layer = _smooth(rng.standard_normal(img.shape), sigma_px)
        img += amplitude * layer / layer.std()
    for _ in range(25):
        y, x = rng.integers(0, img.shape[0] - 40), rng.integers(0, img.shape[1] - 40)
        img[y : y + rng.integers(10, 40), x : x + rng.integers(10, 40)] += rng.uniform(-40, 40)
    return img + 120.0


WORLD_A = _world(1)
WORLD_B = _world(2)
WORLD_A_BLURRED = _smooth(WORLD_A, 8.0)


def view(world: np.ndarray, i: int, gain: float = 1.0, noise_levels: float = 2.0,
          obj: bool = True) -> np.ndarray:
    """A fixed camera looking at ``world``: a small shake, a square walking across, sensor noise."""
    rng = np.random.default_rng(i)
    dy, dx = i % 3, (i // 2) % 3
    img = world[20 + dy : 20 + dy + HEIGHT_PX, 20 + dx : 20 + dx + WIDTH_PX] * gain
    if obj:
        x = (i * 4) % (WIDTH_PX - 30)
        img[100:130, x : x + 30] = 230.0 * gain
    img = img + rng.normal(0.0, noise_levels, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def normal(i: int) -> np.ndarray:
    return view(WORLD_A, i)


def then(after: Scene) -> Scene:
    """The normal scene until SWITCH_S, then ``after``."""
    switch = round(SWITCH_S * FPS)
    return lambda i: normal(i) if i < switch else after(i)


def black(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return np.clip(rng.normal(6.0, 1.5, (HEIGHT_PX, WIDTH_PX)), 0, 255).astype(np.uint8)


FROZEN_PICTURE = normal(round(SWITCH_S * FPS))


def encode_clip(scene: Scene, seconds: float = CLIP_S, b_frames: int = 0) -> bytes:
    """Encode ``scene`` to H.264 in MPEG-TS (what the recorder handles), all in memory."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH_PX, HEIGHT_PX, "yuv420p"
        stream.codec_context.gop_size = GOP_FRAMES
        stream.codec_context.max_b_frames = b_frames
        stream.options = {"preset": "veryfast", "crf": "26", "bf": str(b_frames),
                          "keyint_min": str(GOP_FRAMES), "sc_threshold": "0"}
        for i in range(round(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(scene(i), format="gray").reformat(format="yuv420p")
            frame.pts = i
            frame.pict_type = av.video.frame.PictureType.NONE  # let the encoder choose (GOP)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()
