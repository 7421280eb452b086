"""Serves a WSGI app on 127.0.0.1 for local development, with the library's logs shown.

::

    python -m cloudtasks_deferred.devserver main:app --port 8080

The app is imported from ``MODULE:ATTRIBUTE`` (relative to ``--app-dir``, the
current directory by default) and served by werkzeug's threaded server (the
``flask`` extra), so the Cloud Tasks emulator can deliver tasks while requests
are being served. Configuration comes from the environment as in production:
point it at the emulators and turn on dev mode (see the README).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from ._tooling import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, LOOPBACK
from .deferred import set_log_level

__all__ = ["load_app", "main"]


def load_app(spec: str) -> Any:
    """Imports ``MODULE:ATTRIBUTE`` and returns the attribute.

    Raises:
        ValueError: ``spec`` is not ``MODULE:ATTRIBUTE`` or names nothing callable.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected MODULE:ATTRIBUTE such as main:app, got {spec!r}")
    app = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(app):
        raise ValueError(f"{spec} is not a WSGI application")
    return app


def main(argv: list[str] | None = None) -> int:
    """Serves the app until interrupted.

    Returns:
        The exit code: 0 when stopped, 1 if the app cannot be loaded, 3 if werkzeug
        is not installed (argparse exits 2 on a usage error).
    """
    parser = argparse.ArgumentParser(prog="python -m cloudtasks_deferred.devserver")
    parser.add_argument("app", help="the WSGI app as MODULE:ATTRIBUTE, e.g. main:app")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--app-dir", default=".", help="directory to import the app from")
    parser.add_argument(
        "--log-headers", action="store_true", help="log each task's queue headers too"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if not args.log_headers:
        set_log_level(logging.DEBUG)
    try:
        from werkzeug.serving import run_simple
    except ImportError:
        print(
            "the dev server needs werkzeug: pip install 'cloudtasks-deferred[flask]'",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    os.chdir(args.app_dir)
    sys.path.insert(0, os.getcwd())
    try:
        app = load_app(args.app)
    except (ImportError, ValueError) as exc:
        print(f"cannot load {args.app}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    run_simple(LOOPBACK, args.port, app, threaded=True, use_reloader=False)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
