#!/bin/sh
# The reference node's init (started by tini as PID 1's only child).
PYTHONPATH=/opt/smalltown/lib:/opt/smalltown/site
# Unbuffered: the console is the agent's log. No bytecode writes: everything is
# compiled at build time and the disk is a throw-away snapshot anyway.
PYTHONUNBUFFERED=1
PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH PYTHONUNBUFFERED PYTHONDONTWRITEBYTECODE
exec python3 -m pytest_smalltown.node "$@"
