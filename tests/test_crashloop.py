"""Crash loop: ``kill -9`` the daemon at chosen moments, start it again, and check every promise each time.

A live test-pattern camera is recorded with 2-second segments, a retention period of a few seconds (so
a sweep deletes footage every second) and incident commands arriving over MQTT. Each round starts the
daemon, waits for one kind of moment and kills it there:

- ``write``: at a random time while a segment is being written;
- ``rotation``: the instant a new sealed segment appears (rename done, catalog row perhaps not);
- ``sweep``: the instant the audit log grows (a deletion decided and marked, files perhaps not unlinked);
- ``incident``: a few milliseconds after an incident command was published (commit perhaps half done).

After every kill the start-up repair (``Daemon.open_state``: device key, catalog, reconciliation) runs
in this process and ``CrashLedger.check`` asserts: no ``.partial`` is left and nothing was quarantined;
every segment verifies (framing, signature, and every chunk decrypted with the officer's key); catalog
rows and segment files match one to one; each camera's hash chain is intact, or every break is a
segment the audit log says retention deleted; every acknowledged incident is in the catalog and the
footage it held is still there; the audit log's chain verifies; and the footage lost to the kill is at
most ``flush_seconds`` (plus the encoder's latency). ``bench/crashloop.py`` runs the same rounds many
more times; the rounds and the checks are in ``tests.helpers.crashloop``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.broker import Broker, needs_mosquitto
from tests.helpers.crashloop import LATENCY_ALLOWANCE_S, PHASES, CrashRig, crash_rounds
from tests.helpers.daemon import OfficerKey


# ----- the CI version -------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_mosquitto
def test_ten_kills_at_writes_rotations_sweeps_and_incident_commits_lose_nothing_promised(
        tmp_path: Path, officer: OfficerKey) -> None:
    with Broker(tmp_path / "broker") as broker:
        rig = CrashRig(tmp_path, officer, broker)
        ledger = crash_rounds(rig, kills=10, seed=20261123, log_dir=tmp_path)
    phases = {k.phase for k in ledger.kills}
    assert phases == set(PHASES)
    assert ledger.acked, "no incident command was acknowledged: the incident rounds proved nothing"
    assert ledger.must_keep, "no footage was held"
    losses = [k.lost_s for k in ledger.kills if k.lost_s is not None]
    assert len(losses) == 10
    assert max(losses) <= rig.flush_seconds + LATENCY_ALLOWANCE_S
