"""A one-view Django project for the middleware tests."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from tests import tasks


def hello(request: HttpRequest) -> HttpResponse:
    from cloudtasks_deferred import deferred

    deferred.defer(tasks.record, "from django")
    return HttpResponse("hello from django")


urlpatterns = [path("hello", hello)]
