"""The layer below ``images/`` and ``launch/``: what every part of the host side uses.

One module per job, each importing nothing of this package outside ``base/``:
``errors`` (the root of every error we raise), ``processes`` (supervised
children and the watchdog that cleans up after us), ``programs`` (finding a
host program, one error when it is missing), ``progress`` (progress lines),
``paths`` (the cache root) and ``waits`` (the one polling helper).
"""
