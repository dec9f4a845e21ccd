"""Results as specs finish: :class:`SpecStream` reads Ginkgo's verbose console output line by line.

What Ginkgo v2 (v2.21.0, as e2e.test v1.34 links it) prints with -v, --no-color
and --force-newlines, from reporters/default_reporter.go and checked against
the output of a stand-in suite (tests/unit/conformance/test_stream.py):

  serial (e2e.test alone): before a spec, a delimiter and its name; its
  timeline streams (indented); when it ends, a header ("• [12.3 seconds]",
  "• [FAILED] [12.3 seconds]", "S [SKIPPED] [0.1 seconds]"), for any state but
  passed the name again and the failure, then a delimiter.

  parallel (the Ginkgo CLI): each finished spec as one block, printed whole
  by the CLI: delimiter, header, name, location, its timeline between
  "Timeline >>" and "<< Timeline", the failure, delimiter.

A name line is "<full name> [<labels>]"; for a failed spec Ginkgo marks where
it failed: "[BeforeEach]" after a container's text, "[It] " before the
spec's own, or "TOP-LEVEL [X] " in front. Only lines at column 0 are the
reporter's own: everything a spec prints is indented.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pytest_smalltown.conformance.files import RESULTS_NAME
from pytest_smalltown.conformance.plan import SelectedSpec
from pytest_smalltown.conformance.results import FAILED_STATUSES, SPEC_PREFIX, SpecResult

#: How many lines of a failure (or a skip's reason) a result keeps.
FAILURE_LINES = 5


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DELIMITER = "-" * 30
_WILL_RUN = re.compile(r"^Will run (\d+) of (\d+) specs$")
_SPEC_HEADER = re.compile(
    r"^(?P<mark>•|↺|S|P)(?: \[(?P<state>[A-Z][A-Z0-9 -]*)\])?(?: DURING REPETITION #\d+)?"
    r"(?: \[(?P<seconds>\d+(?:\.\d+)?) seconds\])?$"
)
_SUITE_HEADER = re.compile(
    r"^\[(?P<node>[A-Za-z]+(?: \((?:Each|All|Suite)\))?)\] (?:PASSED|\[(?P<state>[A-Z]+)\])"
    r"(?: \[(?P<seconds>\d+(?:\.\d+)?) seconds\])?$"
)
_NODE_TYPES = (
    r"(?:It|Container|(?:Just)?(?:Before|After)Each|(?:Before|After)All|(?:Synchronized)?(?:Before|After)Suite"
    r"|Report(?:Before|After)(?:Each|Suite)|DeferCleanup(?: \((?:Each|All|Suite)\))?)"
)
_NODE_MARKER = re.compile(rf"\[{_NODE_TYPES}\]")
_TOP_LEVEL = re.compile(rf"^TOP-LEVEL \[{_NODE_TYPES}\] ")
_LABELS = re.compile(r" \[([^\[\]]+)\]$")
_SECTION_END = re.compile(r"^\s*<< (?:Timeline|Captured StdOut/StdErr Output|Report Entries)$")
_FAILURE_START = re.compile(r"^\s*\[(?P<state>FAILED|PANICKED|TIMEDOUT|INTERRUPTED|ABORTED|SKIPPED)\] ")
_FAILURE_WHERE = re.compile(r"^\s*In \[[^\]]+\] at: ")


def _unmarked(line: str) -> Iterator[str]:
    """``line`` without each of the failure marks Ginkgo may have put into a name, one at a time."""
    line = _TOP_LEVEL.sub("", line, count=1)
    yield line
    for mark in _NODE_MARKER.finditer(line):
        before, after = line[: mark.start()], line[mark.end() :]
        yield before.rstrip(" ") + (" " if before.strip() and after.strip() else "") + after.lstrip(" ")


def guess_name(line: str) -> str:
    """A spec's full name from a name line, without knowing the spec: marks and labels taken off.

    The e2e framework writes each label into the name as a bracketed tag too,
    so a trailing bracket is the label list only if every label in it is a tag
    of the name; otherwise it is part of the name.
    """
    candidates = list(_unmarked(line.rstrip()))
    name = candidates[-1]  # a name has no node tags of its own: at most one is there, the failure's
    labels = _LABELS.search(name)
    if labels and all(f"[{label}]" in name[: labels.start()] for label in labels[1].split(", ")):
        name = name[: labels.start()]
    return name


def failure_text(lines: Sequence[str], max_lines: int = FAILURE_LINES) -> str:
    """The first lines of the failure (or skip reason) that ends a spec's block, with where it happened.

    It follows the spec's timeline and other sections, and reads
    ``[FAILED] <message>`` ... ``In [It] at: <file:line> @ <time>``; a panic's
    own text follows that line.
    """
    start = max((i + 1 for i, line in enumerate(lines) if _SECTION_END.match(line)), default=0)
    first = next((i for i in range(start, len(lines)) if _FAILURE_START.match(lines[i])), None)
    if first is None:
        return ""
    text: list[str] = []
    rest = iter(lines[first:])
    for line in rest:
        if line.strip():
            text.append(line.strip())
        if _FAILURE_WHERE.match(line):
            break
    if text[0].startswith("[PANICKED]"):
        text += [line.strip() for line in rest if line.strip()][:1]
    if len(text) > max_lines:
        where = [line for line in text if _FAILURE_WHERE.match(line)][-1:]
        text = text[: max_lines - len(where)] + where
    return "\n".join(text)


@dataclass
class _Block:
    """A finished spec's report, from its header line to the closing delimiter."""

    status: str
    seconds: float
    node: str | None = None  # a suite-level node ("SynchronizedBeforeSuite"), not a spec
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StreamEvent:
    """Something worth telling the user, and the result of the spec that just finished, if any."""

    message: str
    result: SpecResult | None = None


class SpecStream:
    """Reads Ginkgo's verbose console output line by line and tells when each spec finished, and how.

    ``specs`` (the run's plan) turns the name lines Ginkgo prints (with labels
    and failure marks) back into full names exactly; a name that matches no
    planned spec is guessed (:func:`guess_name`).
    """

    def __init__(self, specs: Iterable[SelectedSpec] = ()) -> None:
        self._names = {spec.display: spec.name for spec in specs}
        self.total: int | None = None
        self.all_specs: int | None = None
        self.done = 0
        self.failed: list[str] = []
        #: Everything that finished: specs (``[It] <name>``) and suite-level nodes.
        self.results: list[SpecResult] = []
        self._announced: str | None = None  # serial runs name a spec before it runs
        self._after_delimiter = False
        self._block: _Block | None = None

    def feed(self, line: str) -> StreamEvent | None:
        line = _ANSI.sub("", line).rstrip("\r\n")
        if line == _DELIMITER:
            self._after_delimiter = True
            return self.finish()
        if block := self._header(line):
            event = self.finish()  # a block never closed (there is always a delimiter; just in case)
            self._after_delimiter = False
            if block.status != "ignored":
                self._block = block
            return event
        if self._block is not None:
            self._block.lines.append(line)
            return None
        if match := _WILL_RUN.match(line):
            self.total, self.all_specs = int(match[1]), int(match[2])
            return StreamEvent(f"will run {self.total} of {self.all_specs} specs")
        # A serial run names each spec before it runs (exactly, no failure marks yet);
        # without a plan, the first line after a delimiter is taken for the name.
        if line in self._names or (not self._names and self._after_delimiter and line.strip()):
            self._announced = self._name(line)
        if line.strip():
            self._after_delimiter = False
        return None

    def finish(self) -> StreamEvent | None:
        """Close the open block (a delimiter did, or the output ended): its spec has finished."""
        block, self._block = self._block, None
        if block is None:
            return None
        announced, self._announced = self._announced, None
        if block.node is not None:
            return self._suite_node(block)
        first = next((line for line in block.lines if line.strip()), None)
        name = self._name(first) if first is not None else announced
        self.done += 1
        result = None
        if name is not None:
            result = SpecResult(f"{SPEC_PREFIX}{name}", block.status, block.seconds, failure_text(block.lines),
                                RESULTS_NAME)  # fmt: skip
            self.results.append(result)
        if block.status in FAILED_STATUSES or block.status == "interrupted":
            if block.status != "interrupted":
                self.failed.append(name or "a spec")
            return StreamEvent(f"{block.status.upper()} {name or 'a spec'} ({self._counts()})", result)
        return StreamEvent(self._counts(), result)

    def _header(self, line: str) -> _Block | None:
        if match := _SPEC_HEADER.match(line):
            state = match["state"] or ""
            if match["mark"] in "SP" and not match["seconds"]:
                return _Block("ignored", 0.0)  # filtered out, skipped after an interrupt, pending: nothing ran
            status = "passed" if not state or state.startswith("FLAKEY") else state.lower()
            return _Block(status, float(match["seconds"] or 0.0))
        if match := _SUITE_HEADER.match(line):
            return _Block((match["state"] or "passed").lower(), float(match["seconds"] or 0.0), node=match["node"])
        return None

    def _name(self, line: str) -> str:
        for candidate in _unmarked(line.rstrip()):
            if candidate in self._names:
                return self._names[candidate]
        return guess_name(line)

    def _suite_node(self, block: _Block) -> StreamEvent | None:
        assert block.node is not None
        result = SpecResult(f"[{block.node}]", block.status, block.seconds, failure_text(block.lines), RESULTS_NAME)
        self.results.append(result)
        if block.status not in FAILED_STATUSES:
            return None
        self.failed.append(result.name)
        consequence = ": the suite cannot run its specs" if "BeforeSuite" in block.node else ""
        return StreamEvent(f"{block.node} {block.status.upper()}{consequence} (see the log)", result)

    def _counts(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return f"{self.done}/{total} specs done, {len(self.failed)} failed"
