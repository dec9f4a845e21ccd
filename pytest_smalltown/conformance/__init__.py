"""Running the upstream Kubernetes conformance suite (``e2e.test``) against a cluster.

The suite runs on the host, against the cluster's API server as forwarded to
127.0.0.1, not in the cluster as a pod (the way Sonobuoy does it):

* there is no runner image to build, push or preload: ``e2e.test`` is one
  static binary from our Go build cache (:mod:`images.gobuild`), stamped with
  the cluster's Kubernetes version;
* its output, JUnit report and logs land in a host directory as they are
  written, so nothing has to be copied out of a pod that may be gone by then;
* conformance specs need nothing but the Kubernetes API (and ``kubectl``, which
  is our ``kube`` binary under that name): they create their own pods, and the
  specs that want SSH or a cloud are skipped by ``--provider=skeleton``.

The control plane of a reference node runs as host processes of the node, not
as pods, so the framework flags (:mod:`command`) also stop the framework from
waiting for kube-system pods and from trying to gather logs from nodes over SSH.

One job per module, in the order a run meets them; importers name the module:

* :mod:`files`: the names of a report directory's files (a format: committed
  runs are resumed by later sessions);
* :mod:`command`: the programs a run needs and the command line of one chunk;
* :mod:`plan`: ``run.json``, the dry run that selects the specs, chunks;
* :mod:`smoke`: the smoke subset (``--smoke``, ``e2e/test_conformance.py``);
* :mod:`process`: the suite's process group, stopped in order;
* :mod:`stream` and :mod:`results`: each spec's result as it finishes, read
  from Ginkgo's verbose output into ``results.jsonl``;
* :mod:`junit`: reading each chunk's JUnit, writing ``junit_merged.xml``;
* :mod:`collect` and :mod:`report`: every chunk's results judged against the
  plan, and the one screen of ``summary.txt``;
* :mod:`runner`: :func:`runner.run_conformance` and
  :func:`runner.resume_conformance`, which drive the rest.
"""
