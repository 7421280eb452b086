"""A function source for functions-framework: the library's task entry point, re-exported."""

from cloudtasks_deferred.functions import deferred_task

__all__ = ["deferred_task"]
