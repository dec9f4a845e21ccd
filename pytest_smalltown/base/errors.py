"""The one root of every error pytest-smalltown raises on the host side.

Whoever runs our code (the ``smalltown`` CLI, the pytest plugin, a user's own
script) can tell "pytest-smalltown says this went wrong, and its message says
why" from a bug (a ``KeyError`` in our code, a library's error) by catching
:class:`SmalltownError`: the former deserves one line, the latter a traceback.

Each error class keeps the builtin parent it always had (``RuntimeError``,
``ValueError``, ``TimeoutError`` ...) beside this root, so code that catches
those still does. Two deliberate ``BaseException`` subclasses are no
``SmalltownError``: ``watch.ClusterDiedDuringTest`` and the CLI's SIGTERM
(``_Terminated``) must get through every ``except Exception``, as
``KeyboardInterrupt`` does. Code that runs inside the node (``node/``, and the
files the node image copies: ``contract.py``, ``template.py``) imports nothing
of the host side, this module included.
"""

from __future__ import annotations


class SmalltownError(Exception):
    """Something pytest-smalltown could not do; the message says what, why and, where it can, what to do."""
