"""A counter in a single-file Django project, in the style of App Engine bundled-services code.

What it shows, unchanged from how legacy apps wrote it apart from the imports:

* ``deferred.defer`` from a view, at once, with ``_countdown``, and to a custom ``_url``;
* that URL served by a view calling ``deferred.Handler().post(request.environ)``;
* Django's WSGI application wrapped with ``wrap_wsgi_app``, which also gives every
  request and task an NDB context, so views call NDB directly.

Run it locally with ``cloudtasks-deferred dev main:app`` (see README.md).
"""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from google.cloud import ndb

from cloudtasks_deferred import deferred, wrap_wsgi_app

COUNTER_ID = os.environ.get("GAE_VERSION", "Missing")


class Counter(ndb.Model):
    count = ndb.IntegerProperty(indexed=False)


def do_something_later(counter_id, amount):
    counter = Counter.get_or_insert(counter_id, count=0)
    counter.count += amount
    counter.put()


def increment(request):
    deferred.defer(do_something_later, COUNTER_ID, 10)
    deferred.defer(do_something_later, COUNTER_ID, 10, _countdown=10)
    deferred.defer(do_something_later, COUNTER_ID, 10, _url="/custom/path", _countdown=20)
    return HttpResponse("Deferred counter increment.")


def show(request):
    return HttpResponse(str(Counter.get_or_insert(COUNTER_ID, count=0).count))


@csrf_exempt  # Cloud Tasks posts without a CSRF token; the handler authenticates it
def run_task(request):
    print("Executing deferred task.")
    body, status, headers = deferred.Handler().post(request.environ)
    return HttpResponse(body, status=status, headers=dict(headers))


urlpatterns = [
    path("counter/increment", increment),
    path("counter/get", show),
    path("custom/path", run_task),
]

settings.configure(
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "local-development-only"),
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
)

app = wrap_wsgi_app(get_wsgi_application(), use_deferred=True)
