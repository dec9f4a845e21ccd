"""Shell scripts, C and configuration live in files beside the code, not in Python strings.

That way shellcheck, a C compiler and a TOML parser read them as what they
are (tests/unit/test_package_files.py). Where a file needs a value from the
Python side, it holds a placeholder ``@NAME@`` and :func:`render` fills it in.
This module also runs inside the node (the agent renders its udhcpc script and
containerd configuration), so it imports nothing but the standard library.
"""

from __future__ import annotations

import re
from pathlib import Path

PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


class TemplateError(ValueError):
    """A template and the values given for it do not match."""


def render(path: Path, **values: str) -> str:
    """The text of ``path`` with every ``@NAME@`` replaced by ``values["NAME"]``.

    Both directions must match exactly: a placeholder without a value or a value
    without a placeholder is a :class:`TemplateError`, so that renaming one side
    cannot silently leave ``@NAME@`` in a script or drop a setting.
    """
    text = path.read_text()
    wanted = set(PLACEHOLDER.findall(text))
    missing = wanted - values.keys()
    unused = values.keys() - wanted
    if missing or unused:
        raise TemplateError(f"{path.name}: placeholders without values: {sorted(missing)}; "
                            f"values without placeholders: {sorted(unused)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)
