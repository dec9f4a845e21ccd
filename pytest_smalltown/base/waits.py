"""The host side's one polling helper: call a check until it holds, or say what did not happen.

Launch waits (a port listening, a socket appearing, a migration finishing),
the clients' waits (a pod Running, a node Ready) and tests' own waits all
poll with :func:`wait_for`, so one policy holds for all of them: a fixed
interval up to a deadline, errors that mean "not yet" retried, errors that
mean "never" raised at once, and an interrupt never taken for "not yet".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, retry_if_result, stop_after_delay, wait_fixed

from pytest_smalltown.base.errors import SmalltownError

T = TypeVar("T")


class WaitTimeoutError(SmalltownError, TimeoutError):
    """Something a test waited for did not happen; the message says what and what was last seen."""


class HopelessWaitError(SmalltownError):
    """Raised by a check when waiting longer cannot help (a pod ended in the wrong phase): ends the wait at once."""


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    interval: float = 0.5,
    describe: Callable[[], str] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` until it returns something truthy; return that.

    The host side's one polling policy (a fixed interval up to a deadline,
    on tenacity). Exceptions from ``check`` count as "not yet" (the API may be
    briefly unavailable), except :class:`HopelessWaitError` and the ``fatal``
    types, which are raised at once because waiting cannot help; a
    ``BaseException`` that is no ``Exception`` (an interrupt, the cluster's
    death) ends the wait at once too. On the
    deadline raise :class:`WaitTimeoutError` naming ``what`` and the last state
    (``describe()``, or the last exception ``check`` raised).
    """
    stop_at_once: tuple[type[BaseException], ...] = (HopelessWaitError, *fatal)

    def not_yet(error: BaseException) -> bool:
        # Only an Exception means "not yet". What means "stop everything" is a
        # BaseException and ends the wait at once: KeyboardInterrupt (Ctrl-C,
        # and the plugin's SIGTERM), the death watch's ClusterDiedDuringTest,
        # pytest's outcomes; otherwise the test would sit out the whole timeout.
        return isinstance(error, Exception) and not isinstance(error, stop_at_once)

    def give_up(state: RetryCallState) -> T:
        detail = ""
        if describe is not None:
            try:
                detail = f"; last state: {describe()}"
            except Exception as error:  # noqa: BLE001
                detail = f"; could not describe state: {error}"
        elif state.outcome is not None and state.outcome.failed:
            detail = f"; last error: {state.outcome.exception()}"
        raise WaitTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")

    retrying = Retrying(
        retry=retry_if_exception(not_yet) | retry_if_result(lambda r: not r),
        wait=wait_fixed(interval),
        stop=stop_after_delay(timeout),
        retry_error_callback=give_up,
    )
    result = retrying(check)
    assert result  # tenacity returns only a result the retry condition accepted: a truthy one
    return result
