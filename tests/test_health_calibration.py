"""The health detectors' calibration, both ways, on the scenes of tests/helpers/health_scenes.py.

Normal scenes (test patterns, still and noisy views, low light, IR night, people moving) must not raise
a single raw decision with the default levels, on any keyframe; the tamper scenes (lens covered, camera
frozen, lens defocused or smeared, camera turned) must raise their condition, and only it, within the
documented latency. Also: the list of conditions in the docs is the one in the code.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from edgerec.health import CONDITIONS, Condition, HealthChange, HealthMonitor, HealthThresholds, analyze
from tests.helpers.health_scenes import (
    FPS,
    GOP_FRAMES,
    NORMAL_SCENES,
    TAMPER_AFTER_S,
    TAMPER_SCENES,
    Scene,
    encode_scene,
)
from tests.helpers.health_scenes import keyframes as scene_keyframes

DOCS = Path(__file__).resolve().parent.parent / "docs"
DEFAULTS = HealthThresholds(analysis_interval_s=0.0)
# The default levels with short delays, so that a 30 s clip shows the whole alarm.
FAST = replace(DEFAULTS, frozen_after_s=6.0, dark_after_s=4.0, blurred_after_s=6.0, moved_after_s=6.0)
KEYFRAME_S = GOP_FRAMES / FPS
# A frozen encoder converges on its repeated picture over a few keyframes before they compare equal.
FROZEN_SETTLE_S = 5 * KEYFRAME_S


def _run(scene: Scene, thresholds: HealthThresholds) -> tuple[dict[str, int], list[HealthChange], float, int]:
    """(raw decisions per condition, changes, first keyframe time, keyframes) of one scene."""
    monitor = HealthMonitor(thresholds, camera=scene.name)
    raw = dict.fromkeys(CONDITIONS, 0)
    changes: list[HealthChange] = []
    first_t_s, count = None, 0
    for t_s, gray in scene_keyframes(encode_scene(scene)):
        first_t_s = t_s if first_t_s is None else first_t_s
        changes += monitor.observe(analyze(gray), t_s)
        count += 1
        for name, value in monitor.last_raw.items():
            raw[name] += value
    assert first_t_s is not None
    return raw, changes, first_t_s, count


@pytest.mark.parametrize("scene", NORMAL_SCENES, ids=[s.name for s in NORMAL_SCENES])
def test_normal_scene_raises_nothing_on_any_keyframe(scene: Scene) -> None:
    raw, changes, _, count = _run(scene, DEFAULTS)
    assert count == round(scene.seconds * FPS / GOP_FRAMES)
    wrong = {name: n for name, n in raw.items() if n and name != scene.expect}
    assert wrong == {}, f"{scene.name}: false raw decisions {wrong} in {count} keyframes"
    if scene.expect:  # a still pattern: frozen, and nothing else, from its second keyframe on
        assert raw[scene.expect] >= count - 5


@pytest.mark.parametrize("scene", TAMPER_SCENES, ids=[s.name for s in TAMPER_SCENES])
def test_tamper_scene_raises_its_condition_within_the_latency(scene: Scene) -> None:
    _, changes, first_t_s, _ = _run(scene, FAST)
    assert [c.condition for c in changes if c.active] == [scene.expect]
    after_s = {"dark": FAST.dark_after_s, "frozen": FAST.frozen_after_s, "blurred": FAST.blurred_after_s,
               "moved": FAST.moved_after_s}[scene.expect]
    settle_s = FROZEN_SETTLE_S if scene.expect == "frozen" else 0.0
    delay_s = changes[0].t_s - first_t_s - TAMPER_AFTER_S
    # Latency with analysis of every keyframe: the delay, plus one keyframe to see the change.
    assert after_s <= delay_s <= after_s + KEYFRAME_S + settle_s


def _conditions_line(doc: str) -> list[str]:
    """The backticked names on the doc's one line that starts with "Conditions:"."""
    lines = [line for line in (DOCS / doc).read_text().splitlines() if line.startswith("Conditions:")]
    assert len(lines) == 1, f"{doc}: needs exactly one 'Conditions:' line"
    return re.findall(r"`([^`]+)`", lines[0])


@pytest.mark.parametrize("doc", ["mqtt.md", "configuration.md", "health.md"])
def test_docs_name_exactly_the_conditions_of_the_code(doc: str) -> None:
    assert CONDITIONS == tuple(c.value for c in Condition) == ("dark", "frozen", "blurred", "moved")
    assert _conditions_line(doc) == list(CONDITIONS)
    text = (DOCS / doc).read_text()
    for stale in ("`black`", "`covered`"):
        assert stale not in text
