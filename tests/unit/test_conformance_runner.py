"""The conformance runner: command line, results as specs finish, resume, the honest summary, process handling.

Two kinds of recorded output are replayed here:

* ``RECORDED_*``: from real runs of our ``e2e.test`` (v1.34.4, Ginkgo
  v2.21.0), in Ginkgo's default verbosity (the runner's flags before it went
  verbose);
* ``STANDIN_*``: Ginkgo v2.21.0's verbose output (the runner's flags:
  ``-v --no-color --force-newlines``), from a stand-in suite compiled against
  that Ginkgo (``go test -c``; the Ginkgo CLI for ``--procs=2``): specs
  registered the way the e2e framework's ``registerInSuite`` does (bracketed
  tags in the text, the same names as Ginkgo labels, the ``Serial`` decorator
  with the ``Serial`` label, a failing ``BeforeEach``, ``Skip`` with a reason, a
  node timeout, a panic, a spec that prints a delimiter and a bullet into its
  timeline), run with focus ``\\[Conformance\\]`` and ``--seed=7``; SIGINT to
  the process group for the interrupted one. Goroutine dumps are left out.
  The header and block format is ``reporters/default_reporter.go``'s, which
  does not depend on the suite.

The fake ``e2e.test`` (:data:`FAKE_E2E`) prints what the stand-in printed,
for the specs and outcomes a test gives it, answers the dry run with Ginkgo's
JSON report, and writes the e2e framework's JUnit (also when interrupted).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_smalltown import conformance
from pytest_smalltown.cli import main
from pytest_smalltown.conformance import (
    ConformanceError,
    ConformanceReport,
    RunOptions,
    RunPlan,
    SelectedSpec,
    SpecResult,
    SpecStream,
    SuiteBinaries,
    build_command,
    failure_text,
    go_regexp_quote,
    guess_name,
    parse_dry_run,
    parse_junit,
    plan_chunks,
    resume_conformance,
    run_conformance,
    run_suite,
    smoke_focus,
)

REPO = Path(__file__).resolve().parents[2]

# --- recorded output ------------------------------------------------------------------

#: Two specs failing in BeforeEach (namespace creation refused by a stub API server),
#: e2e.test v1.34.4 at default verbosity; the repeated timeline lines are thinned out.
RECORDED_FAILING_RUN = """\
  I1122 01:15:23.610778   11200 e2e.go:109] Starting e2e run "e4e5a4c0-2798-47b4-85c6-3ed91cee9297" on Ginkgo node 1
Running Suite: Kubernetes e2e suite - /tmp/rec
==============================================
Random Seed: 1795310122 - will randomize all specs

Will run 2 of 7144 specs
------------------------------
• [FAILED] [30.002 seconds]
[sig-node] Pods [BeforeEach] should get a host IP [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
  [BeforeEach] set up framework | framework.go:200
  [It] k8s.io/kubernetes@v1.34.4/test/e2e/common/node/pods.go:205

  Timeline >>
  STEP: Creating a kubernetes client @ 11/22/26 01:15:24.229
  I1122 01:15:24.229400 11200 util.go:454] >>> kubeConfig: /tmp/rec/kubeconfig-fake
  STEP: Building a namespace api object, basename pods @ 11/22/26 01:15:24.23
  I1122 01:15:24.232112 11200 util.go:354] Unexpected error while creating namespace: fake API server: not implemented
  I1122 01:15:54.230280 11200 framework.go:263] Unexpected error: 
      <context.deadlineExceededError>: 
      context deadline exceeded
      
          {}
  [FAILED] in [BeforeEach] - k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:15:54.23
  STEP: dump namespace information after failure @ 11/22/26 01:15:54.23
  << Timeline

  [FAILED] context deadline exceeded
  In [BeforeEach] at: k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:15:54.23
------------------------------
• [FAILED] [30.002 seconds]
[sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  [BeforeEach] set up framework | framework.go:200
  [It] k8s.io/kubernetes@v1.34.4/test/e2e/apimachinery/discovery.go:126

  Timeline >>
  STEP: Creating a kubernetes client @ 11/22/26 01:15:54.424
  I1122 01:15:54.424741 11200 util.go:454] >>> kubeConfig: /tmp/rec/kubeconfig-fake
  STEP: Building a namespace api object, basename discovery @ 11/22/26 01:15:54.425
  I1122 01:15:54.430726 11200 util.go:354] Unexpected error while creating namespace: fake API server: not implemented
  I1122 01:16:24.425949 11200 util.go:354] Unexpected error while creating namespace: client rate limiter Wait returned an error: rate: Wait(n=1) would exceed context deadline
  I1122 01:16:24.426088 11200 framework.go:263] Unexpected error: 
      <context.deadlineExceededError>: 
      context deadline exceeded
      
          {}
  [FAILED] in [BeforeEach] - k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:16:24.426
  STEP: dump namespace information after failure @ 11/22/26 01:16:24.426
  << Timeline

  [FAILED] context deadline exceeded
  In [BeforeEach] at: k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:16:24.426
------------------------------

Summarizing 2 Failures:
  [FAIL] [sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263
  [FAIL] [sig-node] Pods [BeforeEach] should get a host IP [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
  k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263

Ran 2 of 7144 Specs in 60.533 seconds
FAIL! -- 0 Passed | 2 Failed | 0 Pending | 7142 Skipped
--- FAIL: TestE2E (61.47s)
FAIL
"""

#: No API server at all: the suite's setup fails, no spec runs.
RECORDED_NO_CLUSTER = """\
  I1122 01:14:55.942079   10935 e2e.go:109] Starting e2e run "5eb992de-7e22-4a39-b468-8189a9cc279e" on Ginkgo node 1
Running Suite: Kubernetes e2e suite - /tmp/rec
==============================================
Random Seed: 1795310095 - will randomize all specs

Will run 1 of 7144 specs
------------------------------
[SynchronizedBeforeSuite] [FAILED] [15.002 seconds]
[SynchronizedBeforeSuite] 
k8s.io/kubernetes@v1.34.4/test/e2e/e2e.go:69

  Timeline >>
  I1122 01:14:56.210926 10935 util.go:454] >>> kubeConfig: /tmp/rec/kubeconfig-nothing
  I1122 01:14:56.211699 10935 helper.go:51] Waiting up to 15s for all (but 0) nodes to be schedulable
  I1122 01:14:56.212097 10935 wait.go:253] Unexpected error listing nodes: Get "http://127.0.0.1:1/api/v1/nodes?fieldSelector=spec.unschedulable%3Dfalse&resourceVersion=0": dial tcp 127.0.0.1:1: connect: connection refused
  I1122 01:15:11.211988 10935 e2e.go:211] Unexpected error: 
      <context.deadlineExceededError>: 
      context deadline exceeded
      
          {}
  [FAILED] in [SynchronizedBeforeSuite] - k8s.io/kubernetes@v1.34.4/test/e2e/e2e.go:211 @ 11/22/26 01:15:11.212
  << Timeline

  [FAILED] context deadline exceeded
  In [SynchronizedBeforeSuite] at: k8s.io/kubernetes@v1.34.4/test/e2e/e2e.go:211 @ 11/22/26 01:15:11.212
------------------------------

Summarizing 1 Failure:
  [FAIL] [SynchronizedBeforeSuite] 
  k8s.io/kubernetes@v1.34.4/test/e2e/e2e.go:211

Ran 0 of 7144 Specs in 15.002 seconds
FAIL! -- A BeforeSuite node failed so all tests were skipped.
--- FAIL: TestE2E (15.27s)
FAIL
"""

#: The Ginkgo CLI (--procs=2) driving e2e.test: the start of its output.
RECORDED_PARALLEL_HEAD = """\
Running Suite: Kubernetes e2e suite - /root/.cache/pytest-smalltown/go-e2e-d8a03a4038c288f0
===========================================================================================
Random Seed: 1795310191 - will randomize all specs

Will run 2 of 7144 specs
Running in parallel across 2 processes
------------------------------
• [FAILED] [30.004 seconds]
"""


JUNIT = """\
<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="1" errors="0" failures="2" time="312.5">
  <testsuite name="Kubernetes e2e suite" package="/tmp" tests="5" disabled="0" skipped="1" errors="0" failures="2" time="312.5" timestamp="2026-11-22T01:00:00">
    <properties>
      <property name="SuiteSucceeded" value="false"></property>
    </properties>
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.5"></testcase>
    <testcase name="[It] [sig-node] Pods should get a host IP [NodeConformance] [Conformance]" classname="Kubernetes e2e suite" status="passed" time="12.25"></testcase>
    <testcase name="[It] [sig-apps] Deployment should run the lifecycle of a Deployment [Conformance]" classname="Kubernetes e2e suite" status="passed" time="250.0"></testcase>
    <testcase name="[It] [sig-network] DNS should provide DNS for services  [Conformance]" classname="Kubernetes e2e suite" status="failed" time="40.0">
      <failure type="failed">[FAILED] Unable to read agnhost_udp@dns-test-service from pod dns-6172/dns-test
In [It] at: k8s.io/kubernetes/test/e2e/network/dns_common.go:468 @ 11/22/26 01:04:01.123

second line
third line
fourth line</failure>
      <system-err>STEP: Creating a test headless service</system-err>
    </testcase>
    <testcase name="[It] [sig-storage] Projected secret should be consumable [Conformance]" classname="Kubernetes e2e suite" status="timedout" time="8.5">
      <failure type="timedout">[TIMEDOUT] A suite timeout occurred</failure>
    </testcase>
    <testcase name="[It] [sig-cli] Kubectl client Proxy server should support proxy with --port 0 [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0.5">
      <skipped message="skipped - Only supported for providers [gce] (not skeleton)"></skipped>
    </testcase>
    <testcase name="[It] [sig-storage] CSI Volumes [Driver: csi-hostpath] should mount [Feature:X]" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e suite report" classname="Kubernetes e2e suite" status="passed" time="0.001"></testcase>
  </testsuite>
</testsuites>
"""


#: e2e.test alone (serial), verbose: the stand-in suite, focus \[Conformance\], seed 7.
STANDIN_SERIAL = """\
Running Suite: Kubernetes e2e suite - /tmp/ginkgo-standin
=========================================================
Random Seed: 7

Will run 10 of 11 specs
------------------------------
[SynchronizedBeforeSuite] 
/tmp/ginkgo-standin/suite_test.go:49
[SynchronizedBeforeSuite] PASSED [0.000 seconds]
------------------------------
[sig-node] Pods should be updated [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
  STEP: updating @ 12/07/26 11:44:06.535
  [FAILED] in [It] - /tmp/ginkgo-standin/suite_test.go:66 @ 12/07/26 11:44:06.535
• [FAILED] [0.000 seconds]
[sig-node] Pods [It] should be updated [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  [FAILED] pod was not updated
  second line of the failure
  Expected
      <string>: x
  to equal
      <string>: y
  In [It] at: /tmp/ginkgo-standin/suite_test.go:66 @ 12/07/26 11:44:06.535
------------------------------
[sig-node] Pods should get a host IP [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
  STEP: creating pod @ 12/07/26 11:44:06.536
  I1122 01:15:24.229400 11200 util.go:454] >>> kubeConfig: /tmp/kubeconfig
  ------------------------------
  •
• [0.200 seconds]
------------------------------
[sig-node] Pods should run 100% of the time {{braces}} [Conformance] [sig-node, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
• [0.000 seconds]
------------------------------
[sig-api-machinery] Discovery should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
  STEP: Building a namespace api object @ 12/07/26 11:44:06.736
  [FAILED] in [BeforeEach] - /tmp/ginkgo-standin/suite_test.go:74 @ 12/07/26 11:44:06.736
• [FAILED] [0.000 seconds]
[sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  [BeforeEach] /tmp/ginkgo-standin/suite_test.go:72
  [It] /tmp/ginkgo-standin/suite_test.go:41

  [FAILED] unexpected error while creating namespace: fake API server: not implemented
  In [BeforeEach] at: /tmp/ginkgo-standin/suite_test.go:74 @ 12/07/26 11:44:06.736
------------------------------
S
------------------------------
[sig-scheduling] SchedulerPredicates [Serial] validates resource limits of pods that are allowed to run [Conformance] [sig-scheduling, Serial, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
• [0.104 seconds]
------------------------------
[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if matching [Conformance] [sig-scheduling, Serial, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
• [0.100 seconds]
------------------------------
[sig-cli] Kubectl client Proxy server should support proxy with --port 0 [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
  [SKIPPED] in [It] - /tmp/ginkgo-standin/suite_test.go:81 @ 12/07/26 11:44:06.942
S [SKIPPED] [0.000 seconds]
[sig-cli] Kubectl client [It] Proxy server should support proxy with --port 0 [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  [SKIPPED] Only supported for providers [gce] (not skeleton)
  In [It] at: /tmp/ginkgo-standin/suite_test.go:81 @ 12/07/26 11:44:06.942
------------------------------
[sig-cli] Kubectl client should panic [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
  [PANICKED] in [It] - /usr/local/go/src/internal/runtime/maps/runtime_faststr.go:265 @ 12/07/26 11:44:06.942
• [PANICKED] [0.000 seconds]
[sig-cli] Kubectl client [It] should panic [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  [PANICKED] Test Panicked
  In [It] at: /usr/local/go/src/internal/runtime/maps/runtime_faststr.go:265 @ 12/07/26 11:44:06.942

  assignment to entry in nil map

  Full Stack Trace
    standin.init.func5.3()
    	/tmp/ginkgo-standin/suite_test.go:88 +0x28
------------------------------
[sig-cli] Kubectl client should time out [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
  [TIMEDOUT] in [It] - /tmp/ginkgo-standin/suite_test.go:41 @ 12/07/26 11:44:07.242
• [TIMEDOUT] [0.301 seconds]
[sig-cli] Kubectl client [It] should time out [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  [TIMEDOUT] A node timeout occurred
  In [It] at: /tmp/ginkgo-standin/suite_test.go:41 @ 12/07/26 11:44:07.242

  This is the Progress Report generated when the node timeout occurred:
    [sig-cli] Kubectl client should time out [Conformance] (Spec Runtime: 300ms)
      /tmp/ginkgo-standin/suite_test.go:41
      In [It] (Node Runtime: 300ms)
        /tmp/ginkgo-standin/suite_test.go:41

      (goroutine dump left out)
------------------------------
[sig-cli] Kubectl client should wait long [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
• [0.000 seconds]
------------------------------

Summarizing 4 Failures:
  [FAIL] [sig-node] Pods [It] should be updated [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
  /tmp/ginkgo-standin/suite_test.go:66
  [FAIL] [sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  /tmp/ginkgo-standin/suite_test.go:74
  [PANICKED!] [sig-cli] Kubectl client [It] should panic [Conformance] [sig-cli, Conformance]
  /usr/local/go/src/internal/runtime/maps/runtime_faststr.go:265
  [TIMEDOUT] [sig-cli] Kubectl client [It] should time out [Conformance] [sig-cli, Conformance]
  /tmp/ginkgo-standin/suite_test.go:41

Ran 9 of 11 Specs in 0.708 seconds
FAIL! -- 5 Passed | 4 Failed | 0 Pending | 2 Skipped
--- FAIL: TestStandin (0.71s)
FAIL
"""

#: The Ginkgo CLI with --procs=2 over the same suite, verbose.
STANDIN_PARALLEL = """\
Running Suite: Kubernetes e2e suite - /tmp/ginkgo-standin
=========================================================
Random Seed: 7

Will run 10 of 11 specs
Running in parallel across 2 processes
------------------------------
[SynchronizedBeforeSuite] PASSED [0.002 seconds]
[SynchronizedBeforeSuite] 
/tmp/ginkgo-standin/suite_test.go:49
------------------------------
• [FAILED] [0.000 seconds]
[sig-node] Pods [It] should be updated [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  Timeline >>
  STEP: updating @ 12/07/26 11:44:09.794
  [FAILED] in [It] - /tmp/ginkgo-standin/suite_test.go:66 @ 12/07/26 11:44:09.794
  << Timeline

  [FAILED] pod was not updated
  second line of the failure
  Expected
      <string>: x
  to equal
      <string>: y
  In [It] at: /tmp/ginkgo-standin/suite_test.go:66 @ 12/07/26 11:44:09.794
------------------------------
[SynchronizedBeforeSuite] PASSED [0.051 seconds]
[SynchronizedBeforeSuite] 
/tmp/ginkgo-standin/suite_test.go:49
------------------------------
• [0.000 seconds]
[sig-node] Pods should run 100% of the time {{braces}} [Conformance] [sig-node, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
------------------------------
• [FAILED] [0.000 seconds]
[sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  [BeforeEach] /tmp/ginkgo-standin/suite_test.go:72
  [It] /tmp/ginkgo-standin/suite_test.go:41

  Timeline >>
  STEP: Building a namespace api object @ 12/07/26 11:44:09.84
  [FAILED] in [BeforeEach] - /tmp/ginkgo-standin/suite_test.go:74 @ 12/07/26 11:44:09.84
  << Timeline

  [FAILED] unexpected error while creating namespace: fake API server: not implemented
  In [BeforeEach] at: /tmp/ginkgo-standin/suite_test.go:74 @ 12/07/26 11:44:09.84
------------------------------
S
------------------------------
S [SKIPPED] [0.000 seconds]
[sig-cli] Kubectl client [It] Proxy server should support proxy with --port 0 [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  [SKIPPED] Only supported for providers [gce] (not skeleton)
  In [It] at: /tmp/ginkgo-standin/suite_test.go:81 @ 12/07/26 11:44:09.84
------------------------------
• [PANICKED] [0.000 seconds]
[sig-cli] Kubectl client [It] should panic [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  [PANICKED] Test Panicked
  In [It] at: /usr/local/go/src/internal/runtime/maps/runtime_faststr.go:265 @ 12/07/26 11:44:09.841

  assignment to entry in nil map

  Full Stack Trace
    standin.init.func5.3()
    	/tmp/ginkgo-standin/suite_test.go:88 +0x28
------------------------------
• [0.200 seconds]
[sig-node] Pods should get a host IP [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  Timeline >>
  STEP: creating pod @ 12/07/26 11:44:09.795
  I1122 01:15:24.229400 11200 util.go:454] >>> kubeConfig: /tmp/kubeconfig
  ------------------------------
  •
  << Timeline
------------------------------
• [0.000 seconds]
[sig-cli] Kubectl client should wait long [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
------------------------------
• [TIMEDOUT] [0.301 seconds]
[sig-cli] Kubectl client [It] should time out [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  [TIMEDOUT] A node timeout occurred
  In [It] at: /tmp/ginkgo-standin/suite_test.go:41 @ 12/07/26 11:44:10.142

  This is the Progress Report generated when the node timeout occurred:
    [sig-cli] Kubectl client should time out [Conformance] (Spec Runtime: 301ms)
      /tmp/ginkgo-standin/suite_test.go:41
      In [It] (Node Runtime: 300ms)
        /tmp/ginkgo-standin/suite_test.go:41

      (goroutine dump left out)
------------------------------
• [0.100 seconds]
[sig-scheduling] SchedulerPredicates [Serial] validates resource limits of pods that are allowed to run [Conformance] [sig-scheduling, Serial, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
------------------------------
• [0.101 seconds]
[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if matching [Conformance] [sig-scheduling, Serial, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
------------------------------

Summarizing 4 Failures:
  [FAIL] [sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  /tmp/ginkgo-standin/suite_test.go:74
  [PANICKED!] [sig-cli] Kubectl client [It] should panic [Conformance] [sig-cli, Conformance]
  /usr/local/go/src/internal/runtime/maps/runtime_faststr.go:265
  [TIMEDOUT] [sig-cli] Kubectl client [It] should time out [Conformance] [sig-cli, Conformance]
  /tmp/ginkgo-standin/suite_test.go:41
  [FAIL] [sig-node] Pods [It] should be updated [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
  /tmp/ginkgo-standin/suite_test.go:66

Ran 9 of 11 Specs in 0.563 seconds
FAIL! -- 5 Passed | 4 Failed | 0 Pending | 2 Skipped


Ginkgo ran 1 suite in 574.48617ms

Test Suite Failed
"""

#: The serial run again, SIGINT while its last spec ran: the end of its output.
STANDIN_SERIAL_INTERRUPTED = """\
------------------------------
[sig-cli] Kubectl client should wait long [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41
  READY-TO-INTERRUPT
  [INTERRUPTED] in [It] - /tmp/ginkgo-standin/suite_test.go:41 @ 12/07/26 11:44:14.252
  ------------------------------
  Interrupted by User
  First interrupt received; Ginkgo will run any cleanup and reporting nodes but will skip all remaining specs.  Interrupt again to skip cleanup.
  Here's a current progress report:
    [sig-cli] Kubectl client should wait long [Conformance] (Spec Runtime: 335ms)
      /tmp/ginkgo-standin/suite_test.go:41
      In [It] (Node Runtime: 335ms)
        /tmp/ginkgo-standin/suite_test.go:41

      (goroutine dump left out)
  ------------------------------
• [INTERRUPTED] [0.335 seconds]
[sig-cli] Kubectl client [It] should wait long [Conformance] [sig-cli, Conformance]
/tmp/ginkgo-standin/suite_test.go:41

  [INTERRUPTED] Interrupted by User
  In [It] at: /tmp/ginkgo-standin/suite_test.go:41 @ 12/07/26 11:44:14.252

  This is the Progress Report generated when the interrupt was received:
    [sig-cli] Kubectl client should wait long [Conformance] (Spec Runtime: 335ms)
      /tmp/ginkgo-standin/suite_test.go:41
      In [It] (Node Runtime: 335ms)
        /tmp/ginkgo-standin/suite_test.go:41

      (goroutine dump left out)
      (goroutine dump left out)
------------------------------

Summarizing 5 Failures:
  [FAIL] [sig-node] Pods [It] should be updated [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]
  /tmp/ginkgo-standin/suite_test.go:66
  [FAIL] [sig-api-machinery] Discovery [BeforeEach] should validate PreferredVersion for each APIGroup [Conformance] [sig-api-machinery, Conformance]
  /tmp/ginkgo-standin/suite_test.go:74
  [PANICKED!] [sig-cli] Kubectl client [It] should panic [Conformance] [sig-cli, Conformance]
  /usr/local/go/src/internal/runtime/maps/runtime_faststr.go:265
  [TIMEDOUT] [sig-cli] Kubectl client [It] should time out [Conformance] [sig-cli, Conformance]
  /tmp/ginkgo-standin/suite_test.go:41
  [INTERRUPTED] [sig-cli] Kubectl client [It] should wait long [Conformance] [sig-cli, Conformance]
  /tmp/ginkgo-standin/suite_test.go:41

Ran 9 of 11 Specs in 1.039 seconds
FAIL! - Interrupted by User -- 4 Passed | 5 Failed | 0 Pending | 2 Skipped
--- FAIL: TestStandin (1.04s)
FAIL
"""

#: The start of the stand-in's dry-run report (--ginkgo.dry-run --ginkgo.json-report), verbatim:
#: the suite node, a spec the focus left out, a selected one.
DRY_RUN_JSON = """[{"SuiteDescription": "Kubernetes e2e suite", "PreRunStats": {"TotalSpecs": 11, "SpecsThatWillRun": 9},
"SpecReports": [
{"ContainerHierarchyTexts": null, "ContainerHierarchyLocations": null, "ContainerHierarchyLabels": null, "LeafNodeType": "SynchronizedBeforeSuite", "LeafNodeLocation": {"FileName": "/tmp/ginkgo-standin/suite_test.go", "LineNumber": 49}, "LeafNodeLabels": null, "LeafNodeText": "", "State": "passed", "StartTime": "0001-01-01T00:00:00Z", "EndTime": "0001-01-01T00:00:00Z", "RunTime": 0, "ParallelProcess": 1, "NumAttempts": 0, "MaxFlakeAttempts": 0, "MaxMustPassRepeatedly": 0},
{"ContainerHierarchyTexts": ["[sig-storage] CSI Volumes"], "ContainerHierarchyLocations": [{"FileName": "/tmp/ginkgo-standin/suite_test.go", "LineNumber": 28}], "ContainerHierarchyLabels": [["sig-storage"]], "LeafNodeType": "It", "LeafNodeLocation": {"FileName": "/tmp/ginkgo-standin/suite_test.go", "LineNumber": 41}, "LeafNodeLabels": ["Feature:X"], "LeafNodeText": "should mount [Feature:X]", "State": "skipped", "StartTime": "2026-12-07T11:44:30.082044174Z", "EndTime": "0001-01-01T00:00:00Z", "RunTime": 0, "ParallelProcess": 1, "NumAttempts": 0, "MaxFlakeAttempts": 0, "MaxMustPassRepeatedly": 0},
{"ContainerHierarchyTexts": ["[sig-scheduling] SchedulerPredicates [Serial]"], "ContainerHierarchyLocations": [{"FileName": "/tmp/ginkgo-standin/suite_test.go", "LineNumber": 28}], "ContainerHierarchyLabels": [["sig-scheduling", "Serial"]], "LeafNodeType": "It", "LeafNodeLocation": {"FileName": "/tmp/ginkgo-standin/suite_test.go", "LineNumber": 41}, "LeafNodeLabels": ["Conformance"], "LeafNodeText": "validates that NodeSelector is respected if matching [Conformance]", "State": "passed", "StartTime": "2026-12-07T11:44:30.082063761Z", "EndTime": "0001-01-01T00:00:00Z", "RunTime": 0, "ParallelProcess": 1, "NumAttempts": 0, "MaxFlakeAttempts": 0, "MaxMustPassRepeatedly": 0}
]}]
"""

#: The stand-in's specs that focus \[Conformance\] selects, as its dry run lists them.
STANDIN_SPECS = (
    SelectedSpec("[sig-node] Pods should get a host IP [NodeConformance] [Conformance]",
                 ("sig-node", "NodeConformance", "Conformance")),
    SelectedSpec("[sig-node] Pods should be updated [NodeConformance] [Conformance]",
                 ("sig-node", "NodeConformance", "Conformance")),
    SelectedSpec("[sig-node] Pods should run 100% of the time {{braces}} [Conformance]", ("sig-node", "Conformance")),
    SelectedSpec("[sig-api-machinery] Discovery should validate PreferredVersion for each APIGroup [Conformance]",
                 ("sig-api-machinery", "Conformance")),
    SelectedSpec("[sig-cli] Kubectl client Proxy server should support proxy with --port 0 [Conformance]",
                 ("sig-cli", "Conformance")),
    SelectedSpec("[sig-cli] Kubectl client should time out [Conformance]", ("sig-cli", "Conformance")),
    SelectedSpec("[sig-cli] Kubectl client should panic [Conformance]", ("sig-cli", "Conformance")),
    SelectedSpec("[sig-cli] Kubectl client should wait long [Conformance]", ("sig-cli", "Conformance")),
    SelectedSpec("[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if matching "
                 "[Conformance]", ("sig-scheduling", "Serial", "Conformance")),
    SelectedSpec("[sig-scheduling] SchedulerPredicates [Serial] validates resource limits of pods that are allowed "
                 "to run [Conformance]", ("sig-scheduling", "Serial", "Conformance")),
)  # fmt: skip

#: What each of them ended as, in both runs.
STANDIN_OUTCOMES = {
    STANDIN_SPECS[0].name: "passed", STANDIN_SPECS[1].name: "failed", STANDIN_SPECS[2].name: "passed",
    STANDIN_SPECS[3].name: "failed", STANDIN_SPECS[4].name: "skipped", STANDIN_SPECS[5].name: "timedout",
    STANDIN_SPECS[6].name: "panicked", STANDIN_SPECS[7].name: "passed", STANDIN_SPECS[8].name: "passed",
    STANDIN_SPECS[9].name: "passed",
}  # fmt: skip


# --- the dry run, JUnit, the report --------------------------------------------------


def test_the_dry_run_report_lists_the_selected_specs_with_their_labels(tmp_path: Path) -> None:
    (tmp_path / "dry.json").write_text(DRY_RUN_JSON)
    specs = parse_dry_run(tmp_path / "dry.json")
    assert specs == [STANDIN_SPECS[8]], "the suite node and the filtered spec are not selected"
    assert specs[0].display == (
        "[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if matching "
        "[Conformance] [sig-scheduling, Serial, Conformance]"
    )
    assert specs[0].serial and specs[0].serial_decorated
    with pytest.raises(ConformanceError, match="cannot read the dry run"):
        parse_dry_run(tmp_path / "missing.json")


def test_junit_is_parsed_into_specs_and_suite_nodes(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    results = parse_junit(tmp_path / "junit.xml")
    assert [r.status for r in results] == [
        "passed", "passed", "passed", "failed", "timedout", "skipped", "skipped", "passed"]  # fmt: skip
    assert not results[0].is_spec and results[1].is_spec
    assert results[1].title == "[sig-node] Pods should get a host IP [NodeConformance] [Conformance]"
    assert results[3].detail.startswith("[FAILED] Unable to read agnhost_udp")
    assert results[2].seconds == 250.0 and results[2].source == "junit.xml"
    # Skipped at run time (a reason) versus filtered out by the focus (none).
    assert results[5].detail == "Only supported for providers [gce] (not skeleton)" and results[5].selected
    assert not results[6].selected and results[6].verdict is None
    assert [r.verdict for r in results[1:6]] == ["passed", "passed", "failed", "failed", "skipped"]


def test_report_counts_and_renders_one_screen(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    report = ConformanceReport(tuple(parse_junit(tmp_path / "junit.xml")), 1, tmp_path, 4000.0)
    assert (report.passed, report.failed, report.skipped, report.not_run, report.ok) == (2, 2, 1, 0, False)
    text = report.render()
    lines = text.splitlines()
    assert lines[0] == "conformance FAILED: 2 passed, 2 failed, 1 skipped, 0 not run of 5 specs in 1h06m (exit status 1)"
    assert len(lines) <= 25 and all(len(line) <= 100 for line in lines if not line.startswith("report: "))
    slowest = lines[lines.index("slowest:") + 1 :]
    assert slowest[0].strip().startswith("250.0s  [sig-apps] Deployment")
    assert "[sig-network] DNS should provide DNS for services  [Conformance]" in text
    assert "      [FAILED] Unable to read agnhost_udp@dns-test-service from pod dns-6172/dns-test" in lines
    assert "fourth line" not in text  # only the first lines of each failure
    assert "[TIMEDOUT] A suite timeout occurred" in text


def test_report_is_ok_only_when_something_passed_and_nothing_failed(tmp_path: Path) -> None:
    passed = SpecResult("[It] a [Conformance]", "passed", 1.0)
    assert ConformanceReport((passed,), 0, tmp_path, 1.0).ok
    assert not ConformanceReport((passed,), 1, tmp_path, 1.0).ok
    assert not ConformanceReport((), 0, tmp_path, 1.0).ok
    setup = SpecResult("[SynchronizedBeforeSuite]", "failed", 1.0, "[FAILED] no nodes")
    filtered = SpecResult("[It] b", "skipped", 0.0)  # the focus left it out: not counted
    report = ConformanceReport((setup, filtered), 1, tmp_path, 1.0)
    assert (report.passed, report.failed, report.skipped, report.ok) == (0, 1, 0, False)
    assert "[SynchronizedBeforeSuite]" in report.render()
    assert "no spec matched" not in report.render()


def test_a_partial_run_counts_the_selected_specs_without_a_result_as_not_run(tmp_path: Path) -> None:
    """Honest counts: planned specs that never finished (or were interrupted) are not run, and fail the run."""
    results = (
        SpecResult("[It] a", "passed", 1.0),
        SpecResult("[It] b", "skipped", 0.1, "Only supported for providers [gce]"),
        SpecResult("[It] c", "interrupted", 5.0, "[INTERRUPTED] Interrupted by User"),
    )
    report = ConformanceReport(results, 0, tmp_path, 60.0, planned=("a", "b", "c", "d"))
    assert (report.passed, report.failed, report.skipped, report.not_run, report.total) == (1, 0, 1, 2, 4)
    assert not report.ok, "a pass needs every selected spec to have a result"
    text = report.render()
    assert text.startswith("conformance FAILED: 1 passed, 0 failed, 1 skipped, 2 not run of 4 specs")
    assert f"smalltown conformance --resume {tmp_path}" in text
    assert "Interrupted by User" not in text, "an interrupted spec is not a failure of the cluster"
    assert ConformanceReport(results[:2], 0, tmp_path, 1.0, planned=("a", "b")).ok


# --- command line -------------------------------------------------------------------

BINARIES = SuiteBinaries(e2e=Path("/c/e2e.test"), kube=Path("/c/kube"), ginkgo=Path("/c/ginkgo"))
OPTIONS = RunOptions(kubeconfig=Path("/k/kubeconfig"), report_dir=Path("/r"), kubectl=Path("/t/kubectl"))
FRAMEWORK = [
    "--kubeconfig=/k/kubeconfig", "--provider=skeleton", "--kubectl-path=/t/kubectl", "--report-dir=/r",
    "--e2e-output-dir=/r", "--minStartupPods=-1", "--disable-log-dump=true",
]  # fmt: skip


def test_serial_command_is_e2e_test_alone_and_verbose() -> None:
    assert build_command(BINARIES, OPTIONS) == [
        "/c/e2e.test", "--ginkgo.timeout=24h", "--ginkgo.no-color", "--ginkgo.force-newlines", "--ginkgo.v",
        r"--ginkgo.focus=\[Conformance\]", *FRAMEWORK,
    ]  # fmt: skip


def test_parallel_command_runs_the_ginkgo_cli_over_the_binary() -> None:
    options = RunOptions(OPTIONS.kubeconfig, OPTIONS.report_dir, OPTIONS.kubectl, focus="Pods", skip="Serial", procs=3,
                         report_prefix="chunk02_")  # fmt: skip
    assert build_command(BINARIES, options) == [
        "/c/ginkgo", "--procs=3", "--timeout=24h", "--no-color", "--force-newlines", "--v",
        "--focus=Pods", "--skip=Serial", "/c/e2e.test", "--", *FRAMEWORK, "--report-prefix=chunk02_",
    ]  # fmt: skip
    with pytest.raises(ConformanceError, match="needs the Ginkgo CLI"):
        build_command(SuiteBinaries(e2e=BINARIES.e2e, kube=BINARIES.kube), options)


def test_smoke_focus_matches_exactly_the_listed_specs() -> None:
    with pytest.raises(ConformanceError, match="smoke subset is empty"):
        smoke_focus(())
    listed = ["[sig-node] Pods should get a host IP [NodeConformance] [Conformance]", "[sig-x] a.b (c)"]
    focus = re.compile(smoke_focus(listed))  # this subset of RE2 means the same in Python
    # Ginkgo matches "<suite description> <spec text>".
    assert all(focus.search(f"Kubernetes e2e suite {name}") for name in listed)
    for other in ("[sig-node] Pods should get a host IP [NodeConformance] [Conformance] [Slow]",
                  "[sig-x] aXb (c)", "[sig-node] Pods should get a host IP"):
        assert not focus.search(f"Kubernetes e2e suite {other}"), other
    assert go_regexp_quote("x y#z") == "x y#z"  # RE2 rejects Python's escaped space and hash


def test_cli_smoke_with_an_empty_list_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(conformance, "SMOKE_TESTS", ())
    assert main(["conformance", "--smoke", "--kubeconfig", "/nonexistent"]) == 2
    assert "smoke subset is empty" in capsys.readouterr().err
    assert main(["conformance", "--smoke", "--focus", "x"]) == 2


def _plan(specs: tuple[SelectedSpec, ...], focus: str = r"\[Conformance\]", chunks: int = 0) -> RunPlan:
    records = tuple(conformance.ChunkRecord(i, f"junit_{i}.xml", 2, 1, "t") for i in range(1, chunks + 1))
    return RunPlan(focus, "Flaky", 2, specs, records)


def test_the_first_chunk_runs_the_plans_focus_a_resumed_one_the_exact_names_left() -> None:
    plan = _plan(STANDIN_SPECS)
    (first,) = plan_chunks(plan, STANDIN_SPECS, procs=2)
    assert (first.index, first.focus, first.skip, first.procs, first.junit) == (
        1, r"\[Conformance\]", "Flaky", 2, "junit_01.xml")  # fmt: skip
    (resumed,) = plan_chunks(_plan(STANDIN_SPECS, chunks=1), STANDIN_SPECS[3:5], procs=2)
    assert (resumed.index, resumed.junit, resumed.report_prefix) == (2, "junit_chunk02_01.xml", "chunk02_")
    focus = re.compile(resumed.focus)
    assert [spec.name for spec in STANDIN_SPECS if focus.search(f"Kubernetes e2e suite {spec.name}")] == [
        STANDIN_SPECS[3].name, STANDIN_SPECS[4].name]  # fmt: skip


def test_serial_specs_are_left_to_ginkgo_when_it_knows_them_and_run_apart_when_it_does_not() -> None:
    """Every [Serial] conformance spec carries Ginkgo's Serial decorator (the framework adds it with the label):
    Ginkgo runs them on one process after the others. A [Serial] name without it gets a serial chunk of its own."""
    decorated = STANDIN_SPECS[8]
    undecorated = SelectedSpec("[sig-x] Things [Serial] should be alone [Conformance]", ("sig-x", "Conformance"))
    specs = (*STANDIN_SPECS[:2], decorated, undecorated)
    chunks = plan_chunks(_plan(specs), specs, procs=2)
    assert [(c.index, [s.name for s in c.specs], c.procs) for c in chunks] == [
        (1, [specs[0].name, specs[1].name, decorated.name], 2),
        (2, [undecorated.name], 1),
    ]
    assert re.search(chunks[1].focus, f"Kubernetes e2e suite {undecorated.name}")
    assert len(plan_chunks(_plan(specs), specs, procs=1)) == 1, "one process runs everything in turn anyway"


# --- results as specs finish ---------------------------------------------------------


def _stream(text: str, specs: tuple[SelectedSpec, ...] = STANDIN_SPECS) -> tuple[SpecStream, list[str]]:
    stream = SpecStream(specs)
    messages = [event.message for event in map(stream.feed, text.splitlines(keepends=True)) if event]
    return stream, messages


@pytest.mark.parametrize("recorded", [STANDIN_SERIAL, STANDIN_PARALLEL], ids=["serial", "parallel"])
def test_every_finished_spec_is_read_with_its_name_state_and_duration(recorded: str) -> None:
    stream, messages = _stream(recorded)
    specs = {r.title: r for r in stream.results if r.is_spec}
    assert {name: r.status for name, r in specs.items()} == STANDIN_OUTCOMES
    assert len([r for r in stream.results if r.is_spec]) == 10, "each once: a delimiter or bullet in a timeline is not"
    assert specs[STANDIN_SPECS[0].name].seconds == pytest.approx(0.2, abs=0.01)
    assert specs[STANDIN_SPECS[5].name].seconds == pytest.approx(0.301)
    assert specs[STANDIN_SPECS[1].name].detail.splitlines()[:2] == [
        "[FAILED] pod was not updated", "second line of the failure"]  # fmt: skip
    assert specs[STANDIN_SPECS[1].name].detail.splitlines()[-1].startswith("In [It] at: /tmp/ginkgo-standin/")
    assert specs[STANDIN_SPECS[3].name].detail.startswith(
        "[FAILED] unexpected error while creating namespace: fake API server: not implemented\nIn [BeforeEach] at:")
    assert specs[STANDIN_SPECS[4].name].detail.startswith("[SKIPPED] Only supported for providers [gce] (not skeleton)")
    assert specs[STANDIN_SPECS[6].name].detail.splitlines()[-1] == "assignment to entry in nil map"
    assert specs[STANDIN_SPECS[5].name].detail.startswith("[TIMEDOUT] A node timeout occurred")
    assert messages[0] == "will run 10 of 11 specs"
    assert sum(m.startswith(("FAILED", "TIMEDOUT", "PANICKED")) for m in messages) == 4
    assert messages[-1] == "10/10 specs done, 4 failed"


def test_in_parallel_ginkgo_runs_the_serial_specs_last() -> None:
    stream, _ = _stream(STANDIN_PARALLEL)
    order = [r.title for r in stream.results if r.is_spec]
    assert set(order[-2:]) == {STANDIN_SPECS[8].name, STANDIN_SPECS[9].name}


def test_an_interrupted_spec_is_read_as_interrupted_not_failed() -> None:
    stream, messages = _stream(STANDIN_SERIAL_INTERRUPTED)
    (result,) = [r for r in stream.results if r.is_spec]
    assert (result.title, result.status, result.verdict, result.failed) == (
        STANDIN_SPECS[7].name, "interrupted", None, False)  # fmt: skip
    assert result.detail.splitlines()[0] == "[INTERRUPTED] Interrupted by User"
    assert messages == [f"INTERRUPTED {STANDIN_SPECS[7].name} (1/? specs done, 0 failed)"]


def test_e2e_tests_own_failure_blocks_name_the_spec_exactly() -> None:
    """The real e2e.test's output (default verbosity): labels and the [BeforeEach] mark come off the name."""
    specs = (
        SelectedSpec("[sig-node] Pods should get a host IP [NodeConformance] [Conformance]",
                     ("sig-node", "NodeConformance", "Conformance")),
        SelectedSpec("[sig-api-machinery] Discovery should validate PreferredVersion for each APIGroup [Conformance]",
                     ("sig-api-machinery", "Conformance")),
    )  # fmt: skip
    stream, messages = _stream(RECORDED_FAILING_RUN, specs)
    assert [(r.title, r.status) for r in stream.results] == [(specs[0].name, "failed"), (specs[1].name, "failed")]
    assert stream.results[0].detail == (
        "[FAILED] context deadline exceeded\n"
        "In [BeforeEach] at: k8s.io/kubernetes@v1.34.4/test/e2e/framework/framework.go:263 @ 11/22/26 01:15:54.23"
    )
    assert messages == ["will run 2 of 7144 specs", f"FAILED {specs[0].name} (1/2 specs done, 1 failed)",
                        f"FAILED {specs[1].name} (2/2 specs done, 2 failed)"]  # fmt: skip
    stream, _ = _stream(RECORDED_FAILING_RUN, ())
    assert [r.title for r in stream.results] == [s.name for s in specs], "without the plan, the name is guessed"


def test_a_failed_suite_setup_is_reported() -> None:
    stream, messages = _stream(RECORDED_NO_CLUSTER)
    assert (stream.total, stream.done, stream.failed) == (1, 0, ["[SynchronizedBeforeSuite]"])
    assert messages[-1] == "SynchronizedBeforeSuite FAILED: the suite cannot run its specs (see the log)"
    assert stream.results[0].detail.startswith("[FAILED] context deadline exceeded\nIn [SynchronizedBeforeSuite] at:")


def test_progress_under_the_ginkgo_cli() -> None:
    stream, messages = _stream(RECORDED_PARALLEL_HEAD)
    stream.finish()
    assert (stream.total, stream.done) == (2, 1)
    assert messages[0] == "will run 2 of 7144 specs"


def test_names_are_guessed_by_the_frameworks_rule_when_no_plan_knows_them() -> None:
    assert guess_name("[sig-node] Pods [BeforeEach] should get a host IP [NodeConformance] [Conformance] "
                      "[sig-node, NodeConformance, Conformance]") == (
        "[sig-node] Pods should get a host IP [NodeConformance] [Conformance]")  # fmt: skip
    assert guess_name("TOP-LEVEL [BeforeEach] [sig-x] Y [It] should z [Conformance] [sig-x, Conformance]") == (
        "[sig-x] Y should z [Conformance]")  # fmt: skip
    assert guess_name("[sig-x] y should keep [its tag]") == "[sig-x] y should keep [its tag]", "not a label list"


def test_failure_text_keeps_the_first_lines_and_where() -> None:
    lines = ["name", "loc", "", "  Timeline >>", "  [FAILED] in [It] - x.go:1 @ t", "  << Timeline", "",
             *(f"  [FAILED] line {i}" if i == 0 else f"  line {i}" for i in range(9)), "  In [It] at: x.go:1 @ t"]
    assert failure_text(lines).splitlines() == ["[FAILED] line 0", "line 1", "line 2", "line 3", "In [It] at: x.go:1 @ t"]
    assert failure_text(["name", "loc"]) == ""


# --- a fake e2e.test -------------------------------------------------------------------

#: Stands in for e2e.test. CONFIG (a JSON file) gives the suite's specs (name, labels) and
#: each one's outcome (passed, failed, skipped, hang: runs until SIGINT); a selected spec is
#: printed as Ginkgo -v prints it when run serially (STANDIN_SERIAL); on SIGINT the running
#: spec ends INTERRUPTED and the JUnit is written, as Ginkgo's first interrupt does.
FAKE_E2E = r'''
import json, os, re, signal, sys, time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

config = json.loads(Path(CONFIG).read_text())
flags = {}
for arg in sys.argv[1:]:
    key, _, value = arg.lstrip("-").partition("=")
    flags[key] = value
specs = config["specs"]

def display(spec, mark=""):
    labels = f" [{', '.join(spec['labels'])}]" if spec["labels"] else ""
    return mark + spec["name"] + labels

def selected(spec):
    text = "Kubernetes e2e suite " + spec["name"]
    skip = flags.get("ginkgo.skip")
    return re.search(flags["ginkgo.focus"], text) and not (skip and re.search(skip, text))

chosen = [spec for spec in specs if selected(spec)]
if "ginkgo.dry-run" in flags:
    reports = [{"LeafNodeType": "SynchronizedBeforeSuite", "State": "passed"}]
    reports += [{"ContainerHierarchyTexts": [], "ContainerHierarchyLabels": [], "LeafNodeType": "It",
                 "LeafNodeText": s["name"], "LeafNodeLabels": s["labels"],
                 "State": "passed" if s in chosen else "skipped"} for s in specs]
    Path(flags["ginkgo.json-report"]).write_text(json.dumps([{"SpecReports": reports}]))
    print(f"Will run {len(chosen)} of {len(specs)} specs")
    sys.exit(0)

report_dir = Path(flags["report-dir"])
prefix = flags.get("report-prefix", "")
(report_dir / f"argv-{prefix or 'first'}.json").write_text(json.dumps(sys.argv))
(report_dir / f"pid-{prefix or 'first'}").write_text(str(os.getpid()))
done, current = [], None

def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

def write_junit():
    cases = ['<testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.1">'
             '</testcase>']
    judged = {spec["name"]: (status, detail) for spec, status, detail in done}
    for spec in specs:
        status, detail = judged.get(spec["name"], ("skipped", ""))
        inner = {"failed": f'<failure type="failed">{escape(detail)}</failure>',
                 "interrupted": f'<error type="interrupted">{escape(detail)}</error>',
                 "skipped": f'<skipped message={quoteattr(("skipped - " + detail) if detail else "skipped")}></skipped>',
                 }.get(status, "")
        cases.append(f'<testcase name={quoteattr("[It] " + spec["name"])} classname="Kubernetes e2e suite" '
                     f'status="{status}" time="1.5">{inner}</testcase>')
    (report_dir / f"junit_{prefix}01.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="Kubernetes e2e suite" '
        f'tests="{len(cases)}">\n' + "\n".join(cases) + "\n</testsuite></testsuites>\n")

def block(spec, status, message):
    header = {"failed": "• [FAILED]", "skipped": "S [SKIPPED]", "interrupted": "• [INTERRUPTED]"}[status]
    say(f"{header} [1.500 seconds]")
    say(display(spec, "[It] "))
    say("k8s.io/kubernetes/test/e2e/fake.go:41")
    say("")
    say(f"  [{status.upper()}] {message}")
    say("  In [It] at: k8s.io/kubernetes/test/e2e/fake.go:42 @ 12/07/26 11:44:06.535")

def interrupted(*_):
    if current is not None:
        block(current, "interrupted", "Interrupted by User")
        say("-" * 30)
        done.append((current, "interrupted", "[INTERRUPTED] Interrupted by User"))
    write_junit()
    os._exit(1)

signal.signal(signal.SIGINT, interrupted)
say("Running Suite: Kubernetes e2e suite - /fake")
say(f"Will run {len(chosen)} of {len(specs)} specs")
say("-" * 30)
for number, spec in enumerate(chosen):
    if config.get("wait_for_results"):  # the runner must have recorded every spec that finished
        results = report_dir / "results.jsonl"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(results.read_text().splitlines()) if results.exists() else 0) < number:
            time.sleep(0.02)
        with open(report_dir / "observed", "a") as observed:
            observed.write(f"{len(results.read_text().splitlines()) if results.exists() else 0}\n")
    outcome = config["outcomes"].get(spec["name"], "passed")
    say(display(spec))
    say("k8s.io/kubernetes/test/e2e/fake.go:41")
    say(f"  STEP: running {spec['name']} @ 12/07/26 11:44:06.535")
    current = spec
    if outcome == "hang":
        time.sleep(600)
    if outcome == "passed":
        say("• [1.500 seconds]")
        detail = ""
    else:
        detail = "it went wrong" if outcome == "failed" else "Only supported for providers [gce] (not skeleton)"
        block(spec, outcome, detail)
        detail = f"[{outcome.upper()}] {detail}" if outcome == "failed" else detail
    say("-" * 30)
    current = None
    done.append((spec, outcome, detail))
write_junit()
sys.exit(1 if any(status == "failed" for _, status, _ in done) else 0)
'''


def _fake_suite(tmp_path: Path, specs: tuple[SelectedSpec, ...], outcomes: dict[str, str] | None = None,
                **extra: Any) -> SuiteBinaries:  # fmt: skip
    """A fake e2e.test over ``specs``; call again with other outcomes to change what the next run does."""
    config = tmp_path / "fake.json"
    config.write_text(json.dumps({"specs": [{"name": s.name, "labels": list(s.labels)} for s in specs],
                                  "outcomes": outcomes or {}, **extra}))  # fmt: skip
    script = tmp_path / "e2e.test"
    script.write_text(f"#!{sys.executable}\nCONFIG = {str(config)!r}\n{FAKE_E2E}")
    script.chmod(0o755)
    kube = tmp_path / "kube"
    kube.write_text("#!/bin/sh\n")
    kube.chmod(0o755)
    (tmp_path / "kubeconfig").write_text("")
    return SuiteBinaries(e2e=script, kube=kube)


SPECS = (
    SelectedSpec("[sig-node] Pods should get a host IP [NodeConformance] [Conformance]",
                 ("sig-node", "NodeConformance", "Conformance")),
    SelectedSpec("[sig-apps] Deployment should run the lifecycle of a Deployment [Conformance]",
                 ("sig-apps", "Conformance")),
    SelectedSpec("[sig-cli] Kubectl client Proxy server should support proxy with --port 0 [Conformance]",
                 ("sig-cli", "Conformance")),
    SelectedSpec("[sig-network] DNS should provide DNS for services [Conformance]", ("sig-network", "Conformance")),
    SelectedSpec("[sig-scheduling] SchedulerPredicates [Serial] validates that NodeSelector is respected if "
                 "matching [Conformance]", ("sig-scheduling", "Serial", "Conformance")),
    SelectedSpec("[sig-storage] EmptyDir volumes should support (root,0644,tmpfs) [LinuxOnly] [NodeConformance] "
                 "[Conformance]", ("sig-storage", "LinuxOnly", "NodeConformance", "Conformance")),
    SelectedSpec("[sig-storage] CSI Volumes should mount [Feature:X]", ("sig-storage", "Feature:X")),
)  # fmt: skip


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_plans_streams_records_and_reports(tmp_path: Path) -> None:
    binaries = _fake_suite(tmp_path, SPECS, {SPECS[1].name: "failed", SPECS[2].name: "skipped"})
    messages: list[str] = []
    out = tmp_path / "out"
    report = run_conformance(tmp_path / "kubeconfig", report_dir=out, progress=messages.append, binaries=binaries)
    plan = RunPlan.load(out)
    assert [spec.name for spec in plan.specs] == [spec.name for spec in SPECS[:6]], "the dry run's selection"
    assert (plan.focus, plan.skip, plan.procs, [c.junit for c in plan.chunks]) == (
        r"\[Conformance\]", None, 1, ["junit_01.xml"])  # fmt: skip
    assert plan.chunks[0].returncode == 1
    results = _lines(out / "results.jsonl")
    assert [(r["name"], r["state"]) for r in results] == [
        (SPECS[0].name, "passed"), (SPECS[1].name, "failed"), (SPECS[2].name, "skipped"),
        (SPECS[3].name, "passed"), (SPECS[4].name, "passed"), (SPECS[5].name, "passed"),
    ]  # fmt: skip
    assert results[1]["failure"].startswith("[FAILED] it went wrong\nIn [It] at: k8s.io/kubernetes/test/e2e/fake.go")
    assert results[2]["reason"].startswith("[SKIPPED] Only supported") and results[0]["seconds"] == 1.5
    assert (report.passed, report.failed, report.skipped, report.not_run, report.ok) == (4, 1, 1, 0, False)
    assert all(r.source == "junit_01.xml" for r in report.judged), "e2e.test's JUnit is the authority"
    assert (out / "summary.txt").read_text() == report.render() + "\n"
    assert any(m.startswith("conformance: will run 6 of 7 specs") for m in messages)
    assert f"FAILED {SPECS[1].name} (2/6 specs done, 1 failed)" in " ".join(messages)
    log = (out / "e2e.log").read_text()
    assert log.startswith("$ ") and "--ginkgo.v" in log.splitlines()[0]
    with pytest.raises(ConformanceError, match="holds a run already: continue it with smalltown conformance --resume"):
        run_conformance(tmp_path / "kubeconfig", report_dir=out, progress=messages.append, binaries=binaries)
    (out / "run.json").unlink()
    with pytest.raises(ConformanceError, match="holds a run already"):  # its results alone are a run too
        run_conformance(tmp_path / "kubeconfig", report_dir=out, progress=messages.append, binaries=binaries)


def test_each_result_is_on_disk_before_the_next_spec_starts(tmp_path: Path) -> None:
    """Flushed per spec: the fake waits, before each spec, until results.jsonl holds every earlier one."""
    binaries = _fake_suite(tmp_path, SPECS, wait_for_results=True)
    run_conformance(tmp_path / "kubeconfig", report_dir=tmp_path / "out", progress=lambda m: None, binaries=binaries)
    assert (tmp_path / "out" / "observed").read_text().split() == ["0", "1", "2", "3", "4", "5"]


def _interrupt_after(specs_done: int) -> Callable[[str], None]:
    def progress(message: str) -> None:
        if f"{specs_done}/" in message and "specs done" in message:
            raise KeyboardInterrupt

    return progress


def test_an_interrupted_run_keeps_its_results_and_resume_runs_only_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    binaries = _fake_suite(tmp_path, SPECS, {SPECS[1].name: "failed", SPECS[3].name: "hang"})
    with pytest.raises(KeyboardInterrupt):
        run_conformance(tmp_path / "kubeconfig", report_dir=out, progress=_interrupt_after(3), binaries=binaries)
    # What the interrupted run learned: three results, the spec it stopped is not one, the rest not run.
    assert [(r["name"], r["state"]) for r in _lines(out / "results.jsonl")] == [
        (SPECS[0].name, "passed"), (SPECS[1].name, "failed"), (SPECS[2].name, "passed"),
        (SPECS[3].name, "interrupted"),
    ]  # fmt: skip
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("conformance FAILED: 2 passed, 1 failed, 0 skipped, 3 not run of 6 specs")
    assert "note: the run was interrupted; e2e.test was stopped" in summary
    assert (out / "junit_01.xml").exists(), "Ginkgo writes its report on the first interrupt"

    binaries = _fake_suite(tmp_path, SPECS, {SPECS[1].name: "passed"})  # would pass now: it must not run again
    messages: list[str] = []
    report = resume_conformance(tmp_path / "kubeconfig", report_dir=out, progress=messages.append, binaries=binaries)
    argv = json.loads((out / "argv-chunk02_.json").read_text())
    focus = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--ginkgo.focus="))
    assert [s.name for s in SPECS if re.search(focus, f"Kubernetes e2e suite {s.name}")] == [
        SPECS[3].name, SPECS[4].name, SPECS[5].name]  # fmt: skip
    assert (report.passed, report.failed, report.skipped, report.not_run) == (5, 1, 0, 0)
    assert not report.ok, "the failure of the first chunk stands"
    text = report.render()
    assert re.search(r"^chunk 1: 3 results of its 6 specs in [\d.]+s( \([\d.]+ specs/min\))?, 1 process, "
                     r"interrupted$", text, re.M), text
    assert re.search(r"^chunk 2: 3 results of its 3 specs in .*, exit status 0$", text, re.M), text
    assert [c.junit for c in RunPlan.load(out).chunks] == ["junit_01.xml", "junit_chunk02_01.xml"]
    assert (out / "junit_chunk02_01.xml").exists() and (out / "junit_01.xml").exists(), "each chunk's JUnit is kept"
    merged = ET.parse(out / "junit_merged.xml").getroot()
    cases = {case.get("name"): case.get("status") for case in merged.iter("testcase")}
    assert cases == {"[It] " + SPECS[0].name: "passed", "[It] " + SPECS[1].name: "failed",
                     "[It] " + SPECS[2].name: "passed", "[It] " + SPECS[3].name: "passed",
                     "[It] " + SPECS[4].name: "passed", "[It] " + SPECS[5].name: "passed",
                     "[SynchronizedBeforeSuite]": "passed"}  # fmt: skip
    properties = {p.get("name"): p.get("value") for p in merged.iter("property")}
    assert properties["SmalltownMerged"] == "true"
    assert properties["SmalltownMergedFrom"] == "junit_01.xml junit_chunk02_01.xml"
    assert (properties["SmalltownSpecsSelected"], properties["SmalltownSpecsNotRun"]) == ("6", "0")
    assert "Merged by pytest-smalltown" in (out / "junit_merged.xml").read_text()
    assert merged.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]


def test_a_chunk_that_wrote_no_junit_is_judged_by_its_streamed_results(tmp_path: Path) -> None:
    """SIGKILLed (or stopped before Ginkgo wrote its report): results.jsonl stands in, and says so."""
    out = tmp_path / "out"
    binaries = _fake_suite(tmp_path, SPECS, {SPECS[2].name: "hang"})
    with pytest.raises(KeyboardInterrupt):
        run_conformance(tmp_path / "kubeconfig", report_dir=out, progress=_interrupt_after(2), binaries=binaries)
    (out / "junit_01.xml").unlink()
    report = conformance.load_report(out)
    assert (report.passed, report.not_run) == (2, 4)
    assert {r.source for r in report.judged} == {"results.jsonl"}
    assert "note: chunk 1 wrote no JUnit; its results come from results.jsonl" in report.render()


def test_resuming_a_finished_run_runs_nothing(tmp_path: Path) -> None:
    binaries = _fake_suite(tmp_path, SPECS)
    out = tmp_path / "out"
    assert run_conformance(tmp_path / "kubeconfig", report_dir=out, progress=lambda m: None, binaries=binaries).ok
    messages: list[str] = []
    report = resume_conformance(tmp_path / "kubeconfig", report_dir=out, progress=messages.append, binaries=binaries)
    assert report.ok and report.passed == 6
    assert messages == ["conformance: every one of the 6 selected specs has a result; nothing to run"]
    with pytest.raises(ConformanceError, match="holds no conformance run"):
        resume_conformance(tmp_path / "kubeconfig", report_dir=tmp_path, progress=messages.append, binaries=binaries)


def test_a_focus_that_selects_nothing_runs_nothing_and_is_no_pass(tmp_path: Path) -> None:
    binaries = _fake_suite(tmp_path, SPECS)
    report = run_conformance(tmp_path / "kubeconfig", focus="nothing-matches", report_dir=tmp_path / "out",
                             progress=lambda m: None, binaries=binaries)  # fmt: skip
    assert not report.ok and "no spec matched the focus" in report.render()
    assert not (tmp_path / "out" / "e2e.log").exists(), "e2e.test was not started for nothing"


def test_cli_exit_status_follows_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    binaries = _fake_suite(tmp_path, SPECS[:2])
    monkeypatch.setattr(conformance, "build_suite", lambda procs, progress: binaries)
    argv = ["conformance", "--kubeconfig", str(tmp_path / "kubeconfig"), "--report-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "conformance PASSED: 2 passed, 0 failed, 0 skipped, 0 not run of 2 specs" in capsys.readouterr().out
    assert main(argv) == 2, "a directory that holds a run is not written over"
    assert "--resume" in capsys.readouterr().err
    # Nothing ran: not a pass.
    assert main([*argv[:-1], str(tmp_path / "other"), "--focus", "nothing"]) == 1


def test_cli_resume_runs_the_rest_and_fails_while_specs_are_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    binaries = _fake_suite(tmp_path, SPECS, {SPECS[1].name: "hang"})
    monkeypatch.setattr(conformance, "build_suite", lambda procs, progress: binaries)
    with pytest.raises(KeyboardInterrupt):
        run_conformance(tmp_path / "kubeconfig", report_dir=out, progress=_interrupt_after(1), binaries=binaries)
    assert main(["conformance", "--resume", str(out), "--focus", "x"]) == 2
    assert "--focus cannot change them" in capsys.readouterr().err
    assert main(["conformance", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no conformance run" in capsys.readouterr().err
    _fake_suite(tmp_path, SPECS)
    assert main(["conformance", "--resume", str(out), "--kubeconfig", str(tmp_path / "kubeconfig")]) == 0
    assert "conformance PASSED: 6 passed, 0 failed, 0 skipped, 0 not run of 6 specs" in capsys.readouterr().out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


SLEEPER = """
child = subprocess.Popen(['sleep', '300'])
(report_dir / 'pids').write_text(f'{os.getpid()} {child.pid}')
print('Will run 3 of 10 specs', flush=True)
time.sleep(300)
"""


def _sleeper(tmp_path: Path, ignore_sigint: bool) -> Path:
    script = tmp_path / "e2e.test"
    script.write_text(
        f"#!{sys.executable}\nimport os, sys, time, subprocess, signal\nfrom pathlib import Path\n"
        f"report_dir = Path({str(tmp_path)!r})\n"
        + ("signal.signal(signal.SIGINT, signal.SIG_IGN)\n" if ignore_sigint else "") + textwrap.dedent(SLEEPER)
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("ignore_sigint", [False, True])
def test_interrupting_the_runner_kills_the_suite_and_its_children(tmp_path: Path, ignore_sigint: bool) -> None:
    script = _sleeper(tmp_path, ignore_sigint)

    def interrupt(message: str) -> None:
        if "will run" in message:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_suite([str(script)], tmp_path, interrupt, grace=1.0)
    assert time.monotonic() - started < 30
    suite, grandchild = map(int, (tmp_path / "pids").read_text().split())
    assert _wait_dead(suite) and _wait_dead(grandchild)


def test_suite_dies_with_a_sigkilled_runner(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: no orderly teardown runs, the kernel still kills e2e.test."""
    runner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from pytest_smalltown.conformance import start_suite
            process = start_suite(['sleep', '300'], Path({str(tmp_path)!r}), watch=False)
            print(process.popen.pid, flush=True)
            time.sleep(300)
        """)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    assert runner.stdout is not None
    suite = int(runner.stdout.readline())
    assert _alive(suite)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    assert _wait_dead(suite)


# --- SIGTERM: a clean stop, exit 130, one line -------------------------------------------

#: Runs `smalltown conformance` with a fake suite and a fake cluster launch (argv[1]: what the
#: launch does; argv[2]: a work directory with the fake suite), writing markers there.
SIGTERM_DRIVER = r"""
import sys, time
from pathlib import Path
from pytest_smalltown import cli, conformance, launcher

how, work = sys.argv[1], Path(sys.argv[2])

class FakeCluster:
    kubeconfig_path = work / "kubeconfig"

    def close(self):
        (work / "cluster-closed").write_text("yes")

    def dump(self, where):
        pass

def launch(spec, settings, progress=None):
    (work / "launching").write_text("yes")
    if how == "retrying-wait":  # a wait that retries on any Exception, as the launch's waits do
        while True:
            try:
                time.sleep(0.05)
            except Exception:
                pass
    if how == "phase-wrapper":  # a launch phase that wraps any Exception, as ClusterLaunchError does
        try:
            time.sleep(60)
        except Exception as error:
            raise RuntimeError("launch phase failed") from error
    return FakeCluster()

conformance.build_suite = lambda procs, progress: conformance.SuiteBinaries(work / "e2e.test", work / "kube")
launcher.launch_cluster = launch
sys.exit(cli.main(["conformance", "--report-dir", str(work / "out")]))
"""


def _run_until(tmp_path: Path, how: str, ready: Callable[[], bool]) -> subprocess.CompletedProcess[str]:
    driver = subprocess.Popen([sys.executable, "-c", SIGTERM_DRIVER, how, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready(), "the command did not get where it should be signalled"
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=30)
    finally:
        driver.kill()
        driver.wait()
    return subprocess.CompletedProcess(driver.args, driver.returncode, out, err)


def _own_lines(stderr: str) -> list[str]:
    """What the command printed itself, without the progress lines."""
    return [line for line in stderr.splitlines() if not line.startswith("[smalltown]")]


@pytest.mark.parametrize("how", ["retrying-wait", "phase-wrapper"])
def test_sigterm_during_the_launch_is_a_clean_exit_130_not_swallowed_or_wrapped(tmp_path: Path, how: str) -> None:
    _fake_suite(tmp_path, SPECS)
    result = _run_until(tmp_path, how, (tmp_path / "launching").exists)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert _own_lines(result.stderr) == ["conformance: interrupted (SIGTERM) before the suite ran; nothing was recorded"]


def test_sigterm_during_the_suite_stops_e2e_test_and_the_cluster(tmp_path: Path) -> None:
    _fake_suite(tmp_path, SPECS, {SPECS[1].name: "hang"})
    out = tmp_path / "out"
    results = out / "results.jsonl"
    result = _run_until(tmp_path, "launch", lambda: results.exists() and bool(results.read_text().strip()))
    assert result.returncode == 130, result.stderr
    (line,) = _own_lines(result.stderr)
    assert line.startswith("conformance: interrupted (SIGTERM); the suite and the cluster were stopped; "
                           "1 passed, 0 failed, 0 skipped, 5 not run of 6; ")  # fmt: skip
    assert line.endswith(f"continue with: smalltown conformance --resume {out}")
    assert (tmp_path / "cluster-closed").exists()
    assert not _alive(int((out / "pid-first").read_text())), "e2e.test was stopped"
    assert "5 not run" in (out / "summary.txt").read_text()


# --- the smoke test's report directory ---------------------------------------------------


def _e2e_module() -> Any:
    spec = importlib.util.spec_from_file_location("e2e_test_conformance", REPO / "e2e" / "test_conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_reports_of_two_sessions_do_not_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each session writes its smoke report under its own run's artifacts directory."""
    from pytest_smalltown.plugin import SESSION_KEY

    module = _e2e_module()
    used: list[Path] = []

    def fake_run(kubeconfig: Path, **kwargs: Any) -> Any:
        used.append(kwargs["report_dir"])
        return SimpleNamespace(ok=True, passed=len(conformance.SMOKE_TESTS), render=lambda: "ok")

    monkeypatch.setattr(module, "run_conformance", fake_run)
    for run_id in ("20261207-114400-101", "20261207-114400-202"):
        stash = {SESSION_KEY: SimpleNamespace(run_id=run_id)}
        request = SimpleNamespace(config=SimpleNamespace(rootpath=tmp_path, stash=stash))
        settings = SimpleNamespace(artifacts=None)
        module.test_conformance_smoke_subset_passes(SimpleNamespace(kubeconfig_path=tmp_path), settings,
                                                    lambda message: None, request)  # fmt: skip
    assert used[0] != used[1]
    assert used == [tmp_path / "artifacts" / run / "conformance-smoke"
                    for run in ("20261207-114400-101", "20261207-114400-202")]  # fmt: skip
