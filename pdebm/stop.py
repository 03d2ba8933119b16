"""Ending a run on SIGINT / SIGTERM: at a step boundary with a checkpoint, never with a traceback.

One process-wide :data:`STOP`. While a trainer *defers* signals (``with STOP.deferred():``), the
first SIGINT or SIGTERM only sets ``STOP.signal``; the trainer checks it between steps, writes a
checkpoint and ends with exit status ``128 + signal`` and one line on stderr. Outside a deferred
region (command-line start-up, ``pdebm eval``), and for a second signal at any time, the handler
prints one line and exits at once (``SystemExit(128 + signal)``); every file pdebm writes is
written atomically (:mod:`pdebm.io`), so what is on disk is whole either way.

Test hooks (undocumented, environment variables, read once per deferred region):

- ``PDEBM_STOP_AT_STEP=k``: after step ``k`` the trainer behaves as if SIGTERM had arrived.
- ``PDEBM_WAIT_AT=<point>``: at ``<point>`` (``start`` before the run is built, ``step:k``,
  ``final`` before the final evaluation, ``teardown`` after ``train()`` returned inside Hydra) print ``pdebm: test hook: waiting at <point>`` to
  stderr and wait up to 60 s for a real signal; a test sends it once it has read that line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
WAIT_LIMIT_S = 60.0


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """The signal flag and its handlers (see the module docstring)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._depth = 0
        self._old: dict[int, Any] = {}

    # --------------------------------------------------------------------------- handlers
    def install(self) -> None:
        """Catch SIGINT/SIGTERM from now on (main thread only; idempotent)."""
        if self._old or threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signal is None
        if first:
            self.signal = signum
            if self._depth:
                return  # the trainer stops at the next step boundary
        if not first:
            message = f"pdebm: stopped by a second {signal_name(signum)}; exiting at once"
        else:
            message = f"pdebm: stopped by {signal_name(signum)}"
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator["StopRequest"]:
        """Within this block a first signal only sets :attr:`signal`. The outermost block
        installs the handlers (and removes them again if it installed them) and clears the flag."""
        outermost = self._depth == 0
        installed_here = outermost and not self._old
        if outermost:
            self.signal = None
        self.install()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if installed_here:
                self.uninstall()

    def exit(self, message: str) -> None:
        """End the process for the received signal: ``message`` on stderr, status 128 + signal."""
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(128 + int(self.signal))

    # --------------------------------------------------------------------------- test hooks
    def at_step(self, step: int) -> None:
        """Called by the trainer after every step: the test hooks for step ``step``."""
        if os.environ.get("PDEBM_STOP_AT_STEP") == str(step) and self.signal is None:
            self.signal = signal.SIGTERM
        self.wait_at(f"step:{step}")

    def wait_at(self, point: str) -> None:
        if os.environ.get("PDEBM_WAIT_AT") != point or self.signal is not None:
            return
        print(f"pdebm: test hook: waiting at {point}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + WAIT_LIMIT_S
        while self.signal is None and time.monotonic() < deadline:
            time.sleep(0.01)


STOP = StopRequest()
