"""Camera health and tamper detection on decoded keyframes (numpy only, no I/O).

Placeholder for the thresholds type; the analyzer lands with the health work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HealthThresholds:
    frozen_seconds: float = 30.0
    dark_mean_max: float = 16.0
    dark_std_max: float = 6.0
    blur_edge_min: float = 2.0
    moved_diff_min: float = 0.35
    reference_halflife_s: float = 600.0
