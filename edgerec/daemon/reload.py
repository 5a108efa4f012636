"""Config diffing on reload: which cameras start, stop or restart when the configuration file changes.

Pure: the plan is made from the running and the new configuration; the supervisor carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import CameraConfig, Config

# Settings a running daemon cannot take over: its identity and where its footage, catalog and keys live.
IMMUTABLE_KEYS = ("device_id", "data_dir")


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload changes. ``rejected`` says why nothing changes (the other fields are then empty)."""

    rejected: str | None = None
    unchanged: bool = False
    start: tuple[CameraConfig, ...] = ()  # cameras new to the configuration (or newly enabled)
    stop: tuple[str, ...] = ()  # cameras removed (or disabled)
    restart: tuple[CameraConfig, ...] = ()  # cameras whose recording settings changed
    mqtt_changed: bool = False

    @property
    def applies(self) -> bool:
        return self.rejected is None and not self.unchanged


def recording_settings(config: Config) -> tuple[object, ...]:
    """The settings every recorder is made with: a change restarts every camera."""
    return (config.segment_seconds, config.segment_cipher, config.durability, config.recipients,
            config.health)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """The reload from ``old`` to ``new``. A restart happens at a segment boundary (the old recorder seals
    its open segment), so a camera is restarted only when its own or the shared recording settings changed."""
    if new == old:
        return ReloadPlan(unchanged=True)
    immutable = [k for k in IMMUTABLE_KEYS if getattr(new, k) != getattr(old, k)]
    if immutable:
        return ReloadPlan(rejected=f"{', '.join(immutable)} cannot change while running")
    old_cams = {c.name: c for c in old.cameras if c.enabled}
    new_cams = {c.name: c for c in new.cameras if c.enabled}
    all_restart = recording_settings(old) != recording_settings(new)
    return ReloadPlan(
        start=tuple(c for n, c in new_cams.items() if n not in old_cams),
        stop=tuple(sorted(old_cams.keys() - new_cams.keys())),
        restart=tuple(c for n, c in new_cams.items() if n in old_cams and (all_restart or old_cams[n] != c)),
        mqtt_changed=old.mqtt != new.mqtt,
    )
