"""Serves a WSGI app on 127.0.0.1 for local development, with the library's logs shown.

::

    python -m cloudtasks_deferred.devtools.devserver main:app --port 8080

The app is imported from ``MODULE:ATTRIBUTE`` (relative to ``--app-dir``, the
current directory by default) and served by werkzeug's threaded server (the
``flask`` extra), so the Cloud Tasks emulator can deliver tasks while requests
are being served. Configuration comes from the environment as in production, and
it must point at the emulators in dev mode — what ``cloudtasks-deferred dev`` sets
and prints: the server refuses to start without it rather than answer every task
with an error.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import logging
import os
import sys
import traceback
from typing import Any

from cloudtasks_deferred.deferred import set_log_level
from cloudtasks_deferred.devtools import cli_args as _cli_args
from cloudtasks_deferred.devtools.localdev import datastore_problem
from cloudtasks_deferred.devtools.tooling import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, LOOPBACK
from cloudtasks_deferred.errors import ConfigurationError
from cloudtasks_deferred.settings import Settings

__all__ = ["AppLoadError", "check_environment", "load_app", "main"]

_PROG = "python -m cloudtasks_deferred.devtools.devserver"


class AppLoadError(ValueError):
    """``MODULE:ATTRIBUTE`` names no WSGI app; the message says what is wrong."""


def load_app(spec: str) -> Any:
    """Imports ``MODULE:ATTRIBUTE`` and returns the attribute.

    Raises:
        AppLoadError: ``spec`` is not ``MODULE:ATTRIBUTE``, the module is not found or
            raises while imported, or the attribute is missing or not callable. The
            message is one line; for an error in the module it names the file and line.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"expected MODULE:ATTRIBUTE such as main:app, got {spec!r}")
    top = module_name.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise AppLoadError(f"no module named {top!r} in {os.getcwd()} (--app-dir) or installed")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the app's own code: say where it failed, in one line
        hint = ": install the app's requirements" if isinstance(exc, ImportError) else ""
        raise AppLoadError(f"importing {module_name} failed: {_where(exc)}{hint}") from exc
    if not hasattr(module, attribute):
        names = [name for name in vars(module) if callable(getattr(module, name))]
        close = difflib.get_close_matches(attribute, names, n=1)
        hint = f" (did you mean {module_name}:{close[0]}?)" if close else ""
        raise AppLoadError(f"{module_name} has no attribute {attribute!r}{hint}")
    app = getattr(module, attribute)
    if not callable(app):
        raise AppLoadError(f"{spec} is a {type(app).__name__}, not a WSGI application")
    return app


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{place}"


def check_environment(environ: dict[str, str] | None = None) -> str | None:
    """What keeps tasks from running in this server's environment; ``None`` if nothing.

    Tasks reach the app only with dev mode on and the Cloud Tasks emulator's host
    set (the emulator ignores OIDC tokens); NDB code needs a Datastore it can reach.

    Args:
        environ: The variables; ``os.environ`` when ``None``.
    """
    try:
        settings = Settings.from_env(environ)
    except ConfigurationError as exc:
        return str(exc)
    missing = [
        name
        for name, value in (
            ("CLOUD_TASKS_EMULATOR_HOST", settings.emulator_host),
            ("CLOUDTASKS_DEFERRED_DEV_MODE=true", settings.dev_mode),
            ("CLOUDTASKS_DEFERRED_LOCATION", settings.location),
            ("CLOUDTASKS_DEFERRED_BASE_URL", settings.base_url),
        )
        if not value
    ]
    if missing:
        return (
            f"{', '.join(missing)} not set, so tasks could not reach this server: run the app "
            "with `cloudtasks-deferred dev MODULE:ATTRIBUTE`, which starts the emulators and "
            "sets them, or export the variables it prints"
        )
    if settings.ndb is not False and importlib.util.find_spec("google.cloud.ndb") is not None:
        problem = datastore_problem(settings.project)
        if problem is not None:
            return f"{problem}; or set CLOUDTASKS_DEFERRED_NDB=false if the app does not use NDB"
    return None


def main(argv: list[str] | None = None) -> int:
    """Serves the app until interrupted.

    Returns:
        The exit code: 0 when stopped; 1 if the environment is not set for the
        emulators or the app cannot be loaded; 3 if werkzeug is not installed
        (argparse exits 2 on a usage error).
    """
    parser = argparse.ArgumentParser(prog=_PROG)
    parser.add_argument(
        "app",
        type=_cli_args.module_attribute,
        help="the WSGI app as MODULE:ATTRIBUTE, e.g. main:app",
    )
    parser.add_argument("--port", type=_cli_args.port, default=8080)
    parser.add_argument(
        "--app-dir",
        type=_cli_args.directory,
        default=".",
        help="directory to import the app from",
    )
    parser.add_argument(
        "--log-headers", action="store_true", help="log each task's queue headers too"
    )
    args = parser.parse_args(argv)
    try:  # werkzeug comes with the flask or functions extra: loaded only to serve
        from werkzeug.serving import run_simple
    except ImportError:
        return _fail(
            "the dev server needs werkzeug: pip install werkzeug (or the flask extra)",
            EXIT_UNAVAILABLE,
        )
    problem = check_environment()
    if problem is not None:
        return _fail(problem, EXIT_FAILURE)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if not args.log_headers:
        set_log_level(logging.DEBUG)
    os.chdir(args.app_dir)
    sys.path.insert(0, os.getcwd())
    try:
        app = load_app(args.app)
    except AppLoadError as exc:
        return _fail(f"cannot load {args.app}: {exc}", EXIT_FAILURE)
    run_simple(LOOPBACK, args.port, app, threaded=True, use_reloader=False)
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    print(f"{_PROG}: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
