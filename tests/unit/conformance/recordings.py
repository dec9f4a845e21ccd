"""Recorded output of Ginkgo and e2e.test, replayed by the stream and plan tests.

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
"""

from __future__ import annotations

from pytest_smalltown.conformance.plan import SelectedSpec

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

