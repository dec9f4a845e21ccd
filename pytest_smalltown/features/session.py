"""What every feature of the plugin reads: the session's settings, its run id and the terminal.

Built once at ``pytest_configure`` and kept in ``config.stash``, as pytest
keeps its own per-session state (``TempPathFactory.from_config``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_smalltown.settings import OPTIONS, Settings, SettingsError, resolve

SESSION_KEY = pytest.StashKey["SmalltownSession"]()


@dataclass(frozen=True)
class SmalltownSession:
    """The resolved settings and the run id of one pytest session (shared by an xdist controller and its workers)."""

    settings: Settings
    #: Names this run's failure dumps (``artifacts/<run id>/``): two sessions on one host, or
    #: one after another, never write into each other's. xdist workers share their controller's.
    run_id: str

    @classmethod
    def from_config(cls, config: pytest.Config) -> SmalltownSession:
        """The settings from the command line, environment and ini; the run id from the controller or made now."""
        if is_xdist_worker(config):
            run_id = config.workerinput["smalltown_run_id"]  # type: ignore[attr-defined]
        else:
            run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        return cls(resolve_settings(config), run_id)

    @staticmethod
    def of(config: pytest.Config) -> SmalltownSession:
        return config.stash[SESSION_KEY]

    def artifacts_dir(self, rootpath: Path) -> Path:
        """Where this run's failure dumps go: ``--smalltown-artifacts`` (else ``<rootdir>/artifacts``), then the run id."""
        return (self.settings.artifacts or rootpath / "artifacts") / self.run_id


def resolve_settings(config: pytest.Config) -> Settings:
    """The ``--smalltown-*`` settings from the command line, environment and ini; bad values are usage errors."""
    cli = {option.name: config.getoption(f"smalltown_{option.name}") for option in OPTIONS}
    ini = {option.name: config.getini(option.ini) for option in OPTIONS}
    try:
        return resolve(cli, ini)
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from None


def is_xdist_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker (its controller prints summaries and writes files)."""
    return hasattr(config, "workerinput")


def terminal_progress(config: pytest.Config) -> Callable[[str], None]:
    """A progress printer that reaches the terminal even while pytest captures output.

    Image builds and cluster boots take minutes; a silent terminal during
    that time looks like a hang.
    """
    from pytest_smalltown.base.progress import stderr_progress

    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        return stderr_progress

    def progress(message: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(f"[smalltown] {message}")

    return progress
