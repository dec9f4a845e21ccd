"""What a run selected and how it is cut into chunks: ``run.json``, the dry run, focus and skip, resuming.

Before the first spec runs, a Ginkgo dry run (``--ginkgo.dry-run
--ginkgo.json-report``) lists the specs the focus and skip select; they go
into ``run.json`` with the focus, skip and process count (:class:`RunPlan`),
so that ``--resume`` knows which specs still need a result even when nothing
else was written. Each ``e2e.test`` run of a report directory is a chunk
(:class:`Chunk`), recorded in ``run.json`` before it starts and after it ends.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_smalltown.conformance.command import SuiteBinaries
from pytest_smalltown.conformance.errors import ConformanceError
from pytest_smalltown.conformance.files import PLAN_NAME, chunk_junit_name, chunk_report_prefix
from pytest_smalltown.conformance.process import start_suite

#: Seconds the dry run that lists a run's specs may take (it runs no spec).
DRY_RUN_TIMEOUT = 300.0


def go_regexp_quote(text: str) -> str:
    """Quote ``text`` for Go's regexp syntax (RE2), which Ginkgo's focus uses.

    Python's :func:`re.escape` also escapes spaces and ``#``, which RE2 rejects
    as invalid escapes, so it cannot be used for Ginkgo.
    """
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def exact_focus(names: Iterable[str]) -> str:
    """A focus regexp matching exactly the specs named (full names, as ``--list-tests`` prints them)."""
    # Ginkgo matches the focus against "<suite description> <spec text>", so a
    # spec name starts after a space, not at the start of the string.
    return r"\s(?:" + "|".join(go_regexp_quote(name) for name in names) + ")$"


@dataclass(frozen=True)
class SelectedSpec:
    """A spec the run's focus and skip select, as Ginkgo's dry run reports it."""

    #: The full name (containers' texts and the spec's own, joined by spaces): what
    #: ``--list-tests`` prints, what a focus matches, what JUnit names after ``[It]``.
    name: str
    #: Ginkgo labels; the e2e framework gives each bracketed tag of the name one.
    labels: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        """The line Ginkgo's verbose reporter prints for the spec: its name, then its labels."""
        return f"{self.name} [{', '.join(self.labels)}]" if self.labels else self.name

    @property
    def serial(self) -> bool:
        """Conformance marks the specs that must not run beside others with ``[Serial]`` in their names."""
        return "[Serial]" in self.name

    @property
    def serial_decorated(self) -> bool:
        """Whether Ginkgo itself knows: the framework adds the ``Serial`` decorator with the ``Serial`` label.

        Ginkgo runs such specs on process 1 after every other process has
        finished; a ``[Serial]`` name without the decorator would run beside
        others, so :func:`plan_chunks` gives those a serial chunk of their own.
        """
        return "Serial" in self.labels


@dataclass(frozen=True)
class ChunkRecord:
    """One ``e2e.test`` run (chunk) of a report directory, as ``run.json`` keeps it."""

    index: int
    junit: str
    procs: int
    specs: int
    started: str
    returncode: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class RunPlan:
    """What a report directory's run selected and how: its ``run.json``.

    Written before the first spec runs, so that ``--resume`` knows the specs
    that still need a result even when nothing else was written.
    """

    focus: str
    skip: str | None
    procs: int
    specs: tuple[SelectedSpec, ...]
    chunks: tuple[ChunkRecord, ...] = ()

    def save(self, report_dir: Path) -> None:
        """Write ``run.json`` whole or not at all (a reader never sees half of it)."""
        data = {
            "focus": self.focus, "skip": self.skip, "procs": self.procs,
            "specs": [{"name": spec.name, "labels": list(spec.labels)} for spec in self.specs],
            "chunks": [dataclasses.asdict(chunk) for chunk in self.chunks],
        }  # fmt: skip
        tmp = report_dir / f".{PLAN_NAME}.tmp"
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(report_dir / PLAN_NAME)

    @classmethod
    def load(cls, report_dir: Path) -> RunPlan:
        path = report_dir / PLAN_NAME
        try:
            data = json.loads(path.read_text())
            return cls(
                focus=data["focus"], skip=data["skip"], procs=int(data["procs"]),
                specs=tuple(SelectedSpec(s["name"], tuple(s["labels"])) for s in data["specs"]),
                chunks=tuple(ChunkRecord(**chunk) for chunk in data["chunks"]),
            )  # fmt: skip
        except FileNotFoundError:
            raise ConformanceError(
                f"{report_dir} holds no conformance run ({PLAN_NAME} is missing): give the report "
                "directory of a run that smalltown conformance started"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConformanceError(f"cannot read {path}: {error!r}") from None

    def with_chunk(self, record: ChunkRecord) -> RunPlan:
        """The plan with ``record`` added, or replacing the record of the same chunk."""
        others = tuple(chunk for chunk in self.chunks if chunk.index != record.index)
        return dataclasses.replace(self, chunks=tuple(sorted((*others, record), key=lambda c: c.index)))


def parse_dry_run(path: Path) -> list[SelectedSpec]:
    """The specs a dry run selected, from its Ginkgo JSON report (``--ginkgo.json-report``).

    Every spec of the suite is in the report; a dry run marks the selected ones
    ``passed`` and the ones the focus, skip or a pending mark left out
    ``skipped`` or ``pending``.
    """
    try:
        reports = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConformanceError(f"cannot read the dry run's report {path}: {error}") from error
    specs = []
    for report in reports:
        for spec in report.get("SpecReports") or ():
            if spec.get("LeafNodeType") != "It" or spec.get("State") != "passed":
                continue
            texts = [*(spec.get("ContainerHierarchyTexts") or ()), spec.get("LeafNodeText") or ""]
            labels = [label for group in spec.get("ContainerHierarchyLabels") or () for label in group or ()]
            labels += spec.get("LeafNodeLabels") or ()
            specs.append(SelectedSpec(" ".join(text for text in texts if text), tuple(dict.fromkeys(labels))))
    return specs


def list_specs(binaries: SuiteBinaries, focus: str, skip: str | None, workdir: Path) -> list[SelectedSpec]:
    """Ask ``e2e.test`` which specs ``focus`` and ``skip`` select: a dry run, no cluster needed."""
    report = workdir / "dry-run.json"
    argv = [str(binaries.e2e), "--ginkgo.dry-run", "--ginkgo.no-color", f"--ginkgo.json-report={report}",
            f"--ginkgo.focus={focus}", *([f"--ginkgo.skip={skip}"] if skip else [])]  # fmt: skip
    process = start_suite(argv, workdir)
    try:
        output, _ = process.popen.communicate(timeout=DRY_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ConformanceError(f"the dry run listing the specs took over {DRY_RUN_TIMEOUT:.0f}s") from None
    finally:
        process.kill()
    if process.popen.returncode != 0 or not report.exists():
        tail = output.decode("utf-8", errors="replace")[-2000:]
        raise ConformanceError(f"the dry run listing the specs failed (exit {process.popen.returncode}):\n{tail}")
    return parse_dry_run(report)


@dataclass(frozen=True)
class Chunk:
    """One ``e2e.test`` run of a report directory: which specs, with which focus, in how many processes."""

    index: int
    specs: tuple[SelectedSpec, ...]
    focus: str
    skip: str | None
    procs: int

    @property
    def report_prefix(self) -> str:
        """Its ``e2e.test --report-prefix``, which names its JUnit file (:func:`files.chunk_report_prefix`)."""
        return chunk_report_prefix(self.index)

    @property
    def junit(self) -> str:
        """The JUnit file ``e2e.test`` writes for it."""
        return chunk_junit_name(self.index)


def plan_chunks(plan: RunPlan, pending: Sequence[SelectedSpec], procs: int) -> list[Chunk]:
    """The chunks that run ``pending``: the plan's own focus when that is every spec, else their exact names.

    With ``procs > 1`` Ginkgo runs the specs it knows as Serial (the framework's
    ``WithSerial()``, which is how every ``[Serial]`` conformance spec is
    registered) on one process after all others have finished. A spec named
    ``[Serial]`` without that decorator would run beside others: such specs get
    a chunk of their own, after the others, in one process.
    """
    first = max((chunk.index for chunk in plan.chunks), default=0) + 1
    apart = {spec.name for spec in pending if procs > 1 and spec.serial and not spec.serial_decorated}
    together = tuple(spec for spec in pending if spec.name not in apart)
    chunks = []
    if together:
        focus = plan.focus if len(together) == len(plan.specs) else exact_focus(spec.name for spec in together)
        chunks.append(Chunk(first, together, focus, plan.skip, procs))
    if apart:
        alone = tuple(spec for spec in pending if spec.name in apart)
        chunks.append(Chunk(first + len(chunks), alone, exact_focus(sorted(apart)), plan.skip, 1))
    return chunks
