"""The reference node agent: runs inside the node VM (child of tini) and makes it a Smalltown node.

Only grpcio, protobuf and cryptography plus the standard library may be used
here: that is all the node image carries for the agent.
"""

from __future__ import annotations

from importlib import metadata

#: Shown in /etc/os-release. Inside the image the package is not installed
#: (it is copied onto PYTHONPATH), so fall back to the version it was cut from.
try:
    VERSION = metadata.version("pytest-smalltown")
except metadata.PackageNotFoundError:
    VERSION = "0.1.0"
