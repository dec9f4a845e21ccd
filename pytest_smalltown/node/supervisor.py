"""Supervision of the node's components: child processes restarted with backoff.

Each component is a plain child process whose combined stdout/stderr is read
line by line into its :class:`LogBuffer`. When it exits it is restarted after
an exponentially growing delay (reset once it has stayed up for a while), so
a component that fails because a dependency is not up yet (kubelet before the
apiserver, the controller-manager before etcd) simply comes back, as it would
under the original Smalltown supervisor, without the agent having to model
every dependency.

When a component exits, its last few lines are echoed to the console: on a
hung boot the serial tail is often all a developer has.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pytest_smalltown.node.console import Console
from pytest_smalltown.node.logbuffer import LogBuffer, LogRegistry

#: Restart delays: first restart after INITIAL, doubling up to MAX.
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: A run longer than this counts as healthy and resets the backoff.
HEALTHY_RUN = 60.0


@dataclass
class ComponentSpec:
    """How to run one component.

    ``prepare`` runs before every start (e.g. re-render a config file) and may
    raise to postpone the start: the failure is logged and retried with
    backoff like a crash.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    prepare: Callable[[], None] | None = None
    restart: bool = True


def next_backoff(current: float, ran_for: float) -> float:
    """The delay before the next restart, given the last delay and how long the run lasted."""
    if ran_for >= HEALTHY_RUN:
        return INITIAL_BACKOFF
    return min(MAX_BACKOFF, max(INITIAL_BACKOFF, current * 2))


@dataclass
class Component:
    """A running (or restarting) component and its bookkeeping."""

    spec: ComponentSpec
    buffer: LogBuffer
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_exit: int | None = None
    stopping: bool = False
    started: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Starts components, restarts them on exit, and stops them all on shutdown."""

    def __init__(self, logs: LogRegistry, console: Console, echo_tail: int = 8) -> None:
        self.logs = logs
        self.console = console
        self.echo_tail = echo_tail
        self.components: dict[str, Component] = {}
        self._lock = threading.Lock()
        self._shutdown = threading.Event()

    def start(self, spec: ComponentSpec) -> Component:
        """Start ``spec`` under supervision (a second call for a running name is a no-op)."""
        with self._lock:
            existing = self.components.get(spec.name)
            if existing is not None and not existing.stopping:
                return existing
            comp = Component(spec, self.logs.get_or_create(spec.name))
            self.components[spec.name] = comp
        threading.Thread(target=self._run, args=(comp,), name=f"sv-{spec.name}", daemon=True).start()
        return comp

    def _spawn(self, comp: Component) -> subprocess.Popen[bytes]:
        spec = comp.spec
        env = dict(os.environ)
        if spec.env:
            env.update(spec.env)
        return subprocess.Popen(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=spec.cwd,
            # Own process group: stopping a component also stops what it forked
            # (containerd-shims excepted: they re-parent on purpose).
            start_new_session=True,
        )

    def _run(self, comp: Component) -> None:
        backoff = INITIAL_BACKOFF
        while not self._shutdown.is_set() and not comp.stopping:
            began = time.monotonic()
            try:
                if comp.spec.prepare is not None:
                    comp.spec.prepare()
                comp.process = self._spawn(comp)
            except Exception as exc:  # noqa: BLE001 - any failure to start is retried
                comp.buffer.write(f"[supervisor] cannot start: {exc!r}")
                self.console.log(f"{comp.spec.name}: cannot start: {exc}")
                comp.process = None
            else:
                comp.started.set()
                self._pump(comp, comp.process)
                code = comp.process.wait()
                comp.last_exit = code
                if comp.stopping or self._shutdown.is_set():
                    return
                comp.buffer.write(f"[supervisor] exited with code {code}")
                tail = comp.buffer.lines(self.echo_tail + 1)[:-1]
                self.console.log(
                    f"{comp.spec.name}: exited with code {code} after "
                    f"{time.monotonic() - began:.1f}s (restart #{comp.restarts + 1}); last lines:"
                )
                for line in tail:
                    self.console.raw(f"    | {line[:300]}")
            if not comp.spec.restart:
                return
            backoff = next_backoff(backoff, time.monotonic() - began)
            comp.restarts += 1
            if self._shutdown.wait(backoff):
                return

    @staticmethod
    def _pump(comp: Component, proc: subprocess.Popen[bytes]) -> None:
        """Copy output into the buffer line by line, never holding a huge line in memory.

        A line longer than the read chunk is kept up to the buffer's limit and
        only counted beyond it, so its entry still reports the true length.
        """
        assert proc.stdout is not None
        limit = comp.buffer.max_line_length
        head = b""
        length = 0
        while True:
            chunk = proc.stdout.readline(65536)
            if not chunk:
                break
            if len(head) < limit * 4:  # bytes; up to 4 per character in UTF-8
                head += chunk[: limit * 4 - len(head)]
            length += len(chunk)
            if chunk.endswith(b"\n"):
                _write(comp.buffer, head, length - 1)
                head, length = b"", 0
        if head:
            _write(comp.buffer, head, length)
        proc.stdout.close()

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop one component (SIGTERM to its group, then SIGKILL) and do not restart it."""
        comp = self.components.get(name)
        if comp is None:
            return
        comp.stopping = True
        _terminate(comp.process, timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every component, newest first (dependents before their dependencies)."""
        self._shutdown.set()
        for name in reversed(list(self.components)):
            self.stop(name, timeout)


def _write(buf: LogBuffer, head: bytes, length: int) -> None:
    text = head.decode("utf-8", errors="replace")
    # ``length`` excludes the newline. Whole line kept: the character count of the
    # text is exact. Head only: the byte count is the best measure there is.
    buf.write(text, None if length <= len(head.rstrip(b"\r\n")) else length)


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
