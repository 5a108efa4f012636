"""The daemon (``edgerec run``): the supervisor and its rooms.

- ``supervisor``: the ``Daemon``: threads, signals, lifecycle, recorder slots, the watchdog;
- ``worker``: the thread that runs the slow jobs (catalog inserts, sweeps, reloads);
- ``scheduler``: when a retention sweep is due, and the disk-full gate;
- ``reload``: which cameras a config reload starts, stops or restarts;
- ``status``: the status document.
"""

from .supervisor import Daemon

__all__ = ["Daemon"]
