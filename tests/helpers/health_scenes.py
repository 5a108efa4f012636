"""The scenes the health detectors are calibrated on: a table of clip generators and their parameters.

Real footage of classrooms, corridors and school gates cannot ship with the project, so every clip is
made here, as real H.264 encoded with PyAV (libx264), from one of two sources:

- FFmpeg's lavfi test patterns (``testsrc``, ``testsrc2``, ``smptebars``, ...), the pictures of the
  built-in test camera and of test RTSP streams;
- synthetic camera views computed with numpy: a "world" texture with detail at several scales and
  flat objects (walls, doors, posters), seen by a fixed camera that shakes by a pixel or two, with
  Gaussian sensor noise added to every frame. Low light multiplies the world by a small gain; IR night
  footage is grey, low in contrast, lifted off black by the IR illuminator and noisy (gain 0.3, +40
  levels, noise 6); people are darker or brighter upright rectangles walking across at their own speed.

Each ``Scene`` is a row of ``NORMAL_SCENES`` (must raise nothing) or ``TAMPER_SCENES`` (a normal view
that turns into a tamper case after ``TAMPER_AFTER_S``); ``encode_scene`` turns a row into a clip.
``python -m tests.helpers.health_scenes`` prints the figures docs/health.md quotes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

FPS = 5  # few frames: the detectors only see keyframes
GOP_FRAMES = 5  # a keyframe every second
NORMAL_CLIP_S = 30.0
TAMPER_AFTER_S = 8.0
TAMPER_CLIP_S = 30.0
VIEW_SIZE_PX = (640, 360)
_MARGIN_PX = 24  # the world is larger than the view so that the camera can shake and turn

Picture = Callable[[int], np.ndarray]  # frame index -> 2-D uint8 gray picture


@dataclass(frozen=True)
class Scene:
    """One calibration clip: where its pictures come from and what the detectors must say about it."""

    name: str
    description: str
    lavfi: str | None = None  # an FFmpeg source graph, or
    picture: Picture | None = None  # a numpy generator
    size_px: tuple[int, int] = VIEW_SIZE_PX
    seconds: float = NORMAL_CLIP_S
    expect: str | None = None  # the condition it must raise (None: nothing)


def _smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur through the FFT (numpy only)."""
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    kernel = np.exp(-2.0 * np.pi**2 * sigma_px**2 * (fx**2 + fy**2))
    return np.real(np.fft.ifft2(np.fft.fft2(img) * kernel))


def world(seed: int, size_px: tuple[int, int] = VIEW_SIZE_PX) -> np.ndarray:
    """A natural-looking scene: random texture at several scales plus flat rectangles (walls, doors)."""
    rng = np.random.default_rng(seed)
    width, height = size_px
    img = np.zeros((height + 2 * _MARGIN_PX, width + 2 * _MARGIN_PX))
    for sigma_px, amplitude in [(64, 30), (16, 15), (4, 10), (1.4, 6)]:
        layer = _smooth(rng.standard_normal(img.shape), sigma_px)
        img += amplitude * layer / layer.std()
    for _ in range(30):
        y, x = rng.integers(0, img.shape[0] - 80), rng.integers(0, img.shape[1] - 80)
        img[y : y + rng.integers(20, 80), x : x + rng.integers(20, 80)] += rng.uniform(-40, 40)
    return img + 120.0


@dataclass(frozen=True)
class View:
    """A fixed camera looking at a world: exposure, sensor noise, shake and people walking through."""

    world_seed: int = 1
    gain: float = 1.0  # exposure: 1 daylight, 0.15 a dim room
    offset_levels: float = 0.0  # IR illumination lifts everything off black
    noise_levels: float = 2.0  # standard deviation of the sensor noise, per frame
    shake_px: int = 1  # 0: a perfectly still camera
    people: int = 1  # rectangles walking across
    blur_px: float = 0.0  # defocus (Gaussian sigma in pixels of the view)
    size_px: tuple[int, int] = VIEW_SIZE_PX

    def __call__(self, i: int) -> np.ndarray:
        base = _worlds(self.world_seed, self.blur_px, self.size_px)
        width, height = self.size_px
        rng = np.random.default_rng(i * 7919 + self.world_seed)
        dy, dx = (i % (self.shake_px + 1), (i // 2) % (self.shake_px + 1)) if self.shake_px else (0, 0)
        top, left = _MARGIN_PX + dy, _MARGIN_PX + dx
        img = base[top : top + height, left : left + width].copy()
        for k in range(self.people):
            # Each person its own speed, height and clothes; they enter again after leaving.
            w_px, h_px = width // 14, height // 3 + (k * 17) % (height // 4)
            x = (i * (8 + 5 * k) + k * width // max(self.people, 1)) % (width + w_px) - w_px
            y = height - h_px - (k * 13) % (height // 8)
            level = 40.0 if k % 2 else 210.0
            img[y : y + h_px, max(x, 0) : max(x + w_px, 0)] = level
        img = img * self.gain + self.offset_levels + rng.normal(0.0, self.noise_levels, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)


_world_cache: dict[tuple[int, float, tuple[int, int]], np.ndarray] = {}


def _worlds(seed: int, blur_px: float, size_px: tuple[int, int]) -> np.ndarray:
    key = (seed, blur_px, size_px)
    if key not in _world_cache:
        img = world(seed, size_px)
        _world_cache[key] = _smooth(img, blur_px) if blur_px else img
    return _world_cache[key]


def covered(level: float, noise_levels: float) -> Picture:
    """A lens covered by a hand, tape or a bag: a flat picture, maybe grey, with the sensor's noise."""
    def picture(i: int) -> np.ndarray:
        rng = np.random.default_rng(i)
        height, width = VIEW_SIZE_PX[1], VIEW_SIZE_PX[0]
        # A little vignetting: covers are never perfectly even.
        yy, xx = np.mgrid[0:height, 0:width]
        vignette = 3.0 * (((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2)
        noise = rng.normal(0, noise_levels, (height, width))
        return np.clip(level - vignette + noise, 0, 255).astype(np.uint8)
    return picture


def then(before: Picture, after: Picture, after_s: float = TAMPER_AFTER_S) -> Picture:
    """``before`` until ``after_s``, then ``after``."""
    switch = round(after_s * FPS)
    return lambda i: before(i) if i < switch else after(i)


def frozen_at(view: Picture, at_s: float = TAMPER_AFTER_S) -> Picture:
    """The camera stops at ``at_s`` and its encoder keeps sending that one picture."""
    still = view(round(at_s * FPS))
    return lambda i: still


DAYLIGHT = View()
NORMAL_SCENES: tuple[Scene, ...] = (
    # The built-in test camera is testsrc2 at 1280x720 (edgerec.source.TESTSRC_DEFAULTS).
    Scene("testsrc2 1280x720", "the built-in test camera", lavfi="testsrc2", size_px=(1280, 720)),
    Scene("testsrc2 640x360", "a testsrc2 RTSP stream", lavfi="testsrc2"),
    Scene("testsrc2 320x240 noisy", "testsrc2 with temporal noise", lavfi="testsrc2,noise=alls=8:allf=t",
          size_px=(320, 240)),
    Scene("testsrc 640x360", "FFmpeg's older test pattern", lavfi="testsrc"),
    # Still patterns are one picture for ever: frozen is the right answer, and only that.
    Scene("smptebars", "SMPTE colour bars (a still picture)", lavfi="smptebars", expect="frozen"),
    Scene("smptehdbars", "SMPTE HD colour bars (a still picture)", lavfi="smptehdbars", expect="frozen"),
    Scene("pal75bars", "PAL 75 % bars (a still picture)", lavfi="pal75bars", expect="frozen"),
    Scene("rgbtestsrc", "RGB test pattern (a still picture)", lavfi="rgbtestsrc", expect="frozen"),
    Scene("daylight, one person", "a school gate by day", picture=DAYLIGHT),
    Scene("daylight, crowd", "six people crossing a corridor", picture=View(world_seed=3, people=6)),
    Scene("still, noise 1", "an empty room, a still camera, little sensor noise",
          picture=View(world_seed=4, noise_levels=1.0, shake_px=0, people=0)),
    Scene("still, noise 3", "an empty room, a still camera, sensor noise",
          picture=View(world_seed=5, noise_levels=3.0, shake_px=0, people=0)),
    Scene("low light", "a dim corridor (gain 0.2, noise 3)",
          picture=View(world_seed=6, gain=0.2, noise_levels=3.0, people=1)),
    Scene("low light, still", "a dim empty room (gain 0.15, noise 2)",
          picture=View(world_seed=7, gain=0.15, noise_levels=2.0, shake_px=0, people=0)),
    Scene("IR night", "IR night footage: grey, low contrast, noisy (gain 0.3, +40, noise 6)",
          picture=View(world_seed=8, gain=0.3, offset_levels=40.0, noise_levels=6.0, people=1)),
    Scene("IR night, still", "IR night footage of an empty yard",
          picture=View(world_seed=9, gain=0.3, offset_levels=40.0, noise_levels=6.0, shake_px=0, people=0)),
)

TAMPER_SCENES: tuple[Scene, ...] = (
    Scene("covered black", "lens covered: black", seconds=TAMPER_CLIP_S, expect="dark",
          picture=then(DAYLIGHT, covered(4.0, 1.0))),
    Scene("covered, gain up", "lens covered at night: the camera's gain lifts noise",
          seconds=TAMPER_CLIP_S, expect="dark",
          picture=then(View(gain=0.3, offset_levels=40.0, noise_levels=6.0), covered(14.0, 4.0))),
    Scene("frozen", "the camera stops, its encoder repeats one picture", seconds=TAMPER_CLIP_S,
          expect="frozen", picture=then(DAYLIGHT, frozen_at(DAYLIGHT))),
    Scene("frozen IR", "a night camera freezes", seconds=TAMPER_CLIP_S, expect="frozen",
          picture=then(View(gain=0.3, offset_levels=40.0, noise_levels=6.0),
                       frozen_at(View(gain=0.3, offset_levels=40.0, noise_levels=6.0)))),
    Scene("defocused", "lens defocused (sigma 4 px)", seconds=TAMPER_CLIP_S, expect="blurred",
          picture=then(DAYLIGHT, View(blur_px=4.0, people=0, noise_levels=1.0))),
    Scene("smeared", "lens smeared with grease (sigma 10 px, noise 3)", seconds=TAMPER_CLIP_S,
          expect="blurred",
          picture=then(DAYLIGHT, View(blur_px=10.0, people=0, noise_levels=3.0))),
    Scene("turned", "the camera turned to another scene", seconds=TAMPER_CLIP_S, expect="moved",
          picture=then(DAYLIGHT, View(world_seed=2))),
)


def encode_scene(scene: Scene) -> bytes:
    """The scene as an MPEG-TS H.264 clip in memory (libx264, a keyframe every second, CRF 26)."""
    width, height = scene.size_px
    frames = round(scene.seconds * FPS)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = GOP_FRAMES
        stream.codec_context.max_b_frames = 0
        stream.options = {"preset": "veryfast", "crf": "26", "bf": "0", "keyint_min": str(GOP_FRAMES),
                          "sc_threshold": "0"}
        for i, frame in zip(range(frames), _frames(scene), strict=False):
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            frame.pict_type = av.video.frame.PictureType.NONE  # let the encoder follow the GOP
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _frames(scene: Scene) -> Iterator[av.VideoFrame]:
    if scene.picture is not None:
        i = 0
        while True:
            yield av.VideoFrame.from_ndarray(scene.picture(i), format="gray")
            i += 1
    width, height = scene.size_px
    graph = scene.lavfi or ""
    head, _, tail = graph.partition(",")
    source = f"{head}=size={width}x{height}:rate={FPS}" + (f",{tail}" if tail else "")
    with av.open(source, format="lavfi") as container:
        yield from container.decode(video=0)


def keyframes(clip: bytes) -> Iterator[tuple[float, np.ndarray]]:
    """(stream time, analysed gray picture) of every keyframe of ``clip``."""
    from edgerec.health import KeyframeDecoder, packet_time_s

    with av.open(io.BytesIO(clip)) as container:
        stream = container.streams.video[0]
        decoder = KeyframeDecoder(stream.codec_context)
        for packet in container.demux(stream):
            gray = decoder.feed(packet) if packet.size else None
            if gray is not None:
                yield packet_time_s(packet), gray


def main() -> None:
    from edgerec.health import CONDITIONS, HealthMonitor, HealthThresholds, analyze, signature_diff_levels

    print(f"{'scene':28} {'kf':>3} {'mean':>6} {'std':>5} {'layout':>6} {'sharp':>11} {'frozen_diff':>12} "
          f"{'moved':>6} raw")
    for scene in NORMAL_SCENES + TAMPER_SCENES:
        monitor = HealthMonitor(HealthThresholds(analysis_interval_s=0.0))
        feats, raws, diffs, moved, previous = [], dict.fromkeys(CONDITIONS, 0), [], [], None
        for t_s, gray in keyframes(encode_scene(scene)):
            f = analyze(gray)
            monitor.observe(f, t_s)
            if previous is not None:
                diffs.append(signature_diff_levels(f.signature, previous))
            previous = f.signature
            feats.append(f)
            moved.append(monitor.snapshot()["moved_dissimilarity"])
            for name, value in monitor.last_raw.items():
                raws[name] += value
        sharp = [f.sharpness for f in feats]
        print(f"{scene.name:28} {len(feats):3d} {np.mean([f.mean_level for f in feats]):6.1f} "
              f"{min(f.std_level for f in feats):5.1f} {min(f.layout_std_levels for f in feats):6.2f} "
              f"{min(sharp):5.2f}..{max(sharp):4.2f} {min(diffs):5.2f}..{max(diffs):5.2f} {max(moved):6.2f} "
              f"{ {k: v for k, v in raws.items() if v} }")


if __name__ == "__main__":
    main()
