"""Failing a test at once when its cluster dies under it.

The pool checks a cluster before it hands it out, so once a VM has died the
remaining tests of its spec fail at once. This module covers the test that is
running when the VM dies: without it, that test waits for its clients'
timeouts (minutes, under emulation) and then fails with a socket error that
does not say why.

While a test's call phase runs, a watcher thread calls the cluster's
``check_alive`` every second. When that raises, the watcher sends SIGUSR1 to
the main thread, whose handler raises :class:`ClusterDiedDuringTest` there,
wherever the test is waiting (a ``BaseException``, so that no retry loop takes
it for a transient error). The test fails with the VM's exit status and
console tail, and the pool takes the cluster out of service before the next
test. pytest-timeout ends a test the same way, with a signal. It only works in
the main thread of a process, which is where pytest runs tests (each xdist
worker included); elsewhere, the test runs unwatched.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from pytest_smalltown.pool import ClusterHandle

#: Seconds between liveness checks: a dead VM is noticed within about this long.
CHECK_EVERY = 1.0
#: The signal the watcher interrupts the test with.
DEATH_SIGNAL = signal.SIGUSR1


class ClusterDiedDuringTest(BaseException):
    """A VM of the cluster this test was using exited (or hung) while the test ran.

    A :class:`BaseException`, like pytest's own ``pytest.fail`` and
    ``KeyboardInterrupt``: it means "stop the test", never "not yet". It
    lands wherever the test is waiting, which is usually inside a retry loop
    (``base.waits.wait_for``, tenacity, the debug client, a test's own ``except
    Exception``) that would count an ``Exception`` as a transient failure and
    sit out its whole timeout. pytest still reports it as the test's failure.
    """


class DeathWatch:
    """Interrupts the running test when its cluster dies; one per pytest process."""

    def __init__(self, every: float = CHECK_EVERY) -> None:
        self.every = every
        self._pending: BaseException | None = None
        # Reentrant: the signal handler runs in the main thread, possibly while
        # that thread holds the lock (clearing a death as its test ends).
        self._lock = threading.RLock()
        self._installed = False
        self._previous: signal._HANDLER = signal.SIG_DFL

    def install(self) -> None:
        """Take over :data:`DEATH_SIGNAL` (main thread only; elsewhere tests run unwatched)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(DEATH_SIGNAL, self._interrupt)
        self._installed = True

    def uninstall(self) -> None:
        """Give the signal back to whoever had it (pytester runs sessions inside sessions)."""
        if self._installed:
            signal.signal(DEATH_SIGNAL, self._previous)
            self._installed = False

    @contextlib.contextmanager
    def watching(self, cluster: ClusterHandle) -> Iterator[None]:
        """While the block runs, a death of ``cluster`` raises :class:`ClusterDiedDuringTest` in it."""
        if not self._installed or threading.current_thread() is not threading.main_thread():
            yield
            return
        stop = threading.Event()
        main = threading.main_thread().ident
        assert main is not None

        def watch() -> None:
            while not stop.wait(self.every):
                try:
                    cluster.check_alive()
                except Exception as death:  # noqa: BLE001 - whatever check_alive says is the reason
                    with self._lock:
                        if stop.is_set():
                            return
                        self._pending = death
                    signal.pthread_kill(main, DEATH_SIGNAL)
                    return

        watcher = threading.Thread(target=watch, name="smalltown-death-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            with self._lock:
                stop.set()
                self._pending = None
            watcher.join()

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        with self._lock:
            death, self._pending = self._pending, None
        if death is not None:
            raise ClusterDiedDuringTest(f"the cluster died while this test ran: {death}") from death
