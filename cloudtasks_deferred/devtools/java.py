"""Whether Java, which runs the Cloud SDK's Datastore emulator, is installed and recent enough."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Final

__all__ = ["MIN_JAVA", "java_problem"]

#: The Datastore emulator's jar is built for Java 11 (class file version 55).
MIN_JAVA: Final = 11
_VERSION: Final = re.compile(r'version "(\d+)(?:\.(\d+))?')
_INSTALL: Final = f"install Java {MIN_JAVA} or later (e.g. apt-get install openjdk-17-jre-headless)"


def java_problem(needed_by: str) -> str | None:
    """What is wrong with the ``java`` on the ``PATH``, and what to install.

    Args:
        needed_by: What runs on Java, for the message (``"the Datastore emulator"``).

    Returns:
        ``None`` if ``java`` runs and reports version :data:`MIN_JAVA` or later (or a
        version this cannot read: the program itself then decides); otherwise a
        sentence saying what is missing and how to install it.
    """
    java = shutil.which("java")
    if java is None:
        return f"{needed_by} runs on Java, and `java` is not on the PATH: {_INSTALL}"
    try:
        result = subprocess.run(  # noqa: S603 - argv built here, no shell
            [java, "-version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{needed_by} runs on Java, and {java} does not run ({exc}): {_INSTALL}"
    found = _VERSION.search(result.stderr + result.stdout)
    if found is None:
        return None
    major = int(found[2] or 0) if found[1] == "1" else int(found[1])  # "1.8.0" is Java 8
    if major < MIN_JAVA:
        return f"{needed_by} needs Java {MIN_JAVA} or later, and {java} is Java {major}: {_INSTALL}"
    return None
