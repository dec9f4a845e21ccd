"""The pytest plugin's features, one plugin object each.

``pytest_smalltown.plugin`` (the entry point) registers them at
``pytest_configure``, the way pytest registers its own (``LFPlugin``,
``terminalreporter``): each object holds its own state and implements its
own hooks, so a feature can be read, and changed, on its own.

- :mod:`.session`: what all of them read (settings, run id, the terminal).
- :mod:`.specs`: which cluster each test needs; tests grouped by it.
- :mod:`.capacity`: ``--smalltown-max-nodes``, what the host carries.
- :mod:`.sharding`: ``--smalltown-shard`` and ``--smalltown-durations``.
- :mod:`.xdist`: pytest-xdist, one worker per spec.
- :mod:`.clusters`: the pool of live clusters, the death watch, the summary.
- :mod:`.keeping`: ``--smalltown-keep-on-failure``.
- :mod:`.failures`: a failed test's evidence and artifacts.
- :mod:`.failure_snapshots`: ``--smalltown-snapshot-on-failure``, a failed test's cluster saved whole.
"""
