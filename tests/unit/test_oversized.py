"""The size decision: what travels inline, compressed, or to Datastore, and what is refused."""

from __future__ import annotations

import dataclasses
import random
from http import HTTPStatus
from typing import Any

import pytest

from cloudtasks_deferred import (
    Client,
    ConfigurationError,
    Error,
    PayloadTooLargeError,
    Settings,
    deferred,
    limits,
)
from cloudtasks_deferred.enqueue.options import split_options
from cloudtasks_deferred.enqueue.oversized import (
    MARGIN_BYTES,
    MAX_INLINE_TASK_BYTES,
    MAX_STORED_BYTES,
    Placement,
    place,
    task_bytes,
)
from cloudtasks_deferred.enqueue.tasks import task_builder
from cloudtasks_deferred.enqueue.transports.memory import InMemoryTransport
from cloudtasks_deferred.payload.calls import serialize
from cloudtasks_deferred.payload.frame import MAX_PICKLE_BYTES, decode
from cloudtasks_deferred.settings import Platform
from cloudtasks_deferred.testing import in_memory_queue
from tests import tasks
from tests.tasks import RECORDER, fingerprint

SETTINGS = Settings(
    project="p",
    location="us-central1",
    base_url="https://svc.example",
    service_account="t@p.iam.gserviceaccount.com",
    ndb=False,
)
PARENT = "projects/p/locations/us-central1/queues/default"


def noise(size: int) -> bytes:
    return random.Random(size).randbytes(size)  # noqa: S311 - test data


def placed(blob: bytes, **options: Any) -> Placement:
    client = Client(SETTINGS, transport=InMemoryTransport())
    parsed, _ = split_options(options)
    build = task_builder(client, parsed, PARENT)
    return place(client, serialize(tasks.digest, blob), {}, build)


def test_the_margin_is_documented_and_under_the_task_limit() -> None:
    assert limits.MAX_TASK_BYTES == 1024 * 1024
    assert MAX_INLINE_TASK_BYTES == limits.MAX_TASK_BYTES - MARGIN_BYTES
    assert MARGIN_BYTES == 16 * 1024


def test_a_small_payload_travels_inline_uncompressed() -> None:
    placement = placed(b"x" * 10_000)
    assert placement.stored is None
    assert placement.task is not None
    assert not decode(placement.task.http_request.body).compressed


def test_the_limit_is_on_the_whole_task_not_only_the_body() -> None:
    """Payload, URL and headers count together: big headers push a payload out."""
    client = Client(SETTINGS, transport=InMemoryTransport())
    pickled = serialize(tasks.digest, noise(960_000))
    headers = {f"X-Pad-{i}": "v" * 1000 for i in range(75)}  # 75 KB of headers
    for options, expected in (({}, "inline"), ({"_headers": headers}, "stored")):
        parsed, _ = split_options(options)
        build = task_builder(client, parsed, PARENT)
        size = task_bytes(build(client.frame_payload(pickled, {})))
        placement = place(client, pickled, {}, build, max_task_bytes=size)
        assert placement.task is not None, "a task exactly at the limit stays inline"
        placement = place(client, pickled, {}, build, max_task_bytes=size - 1)
        assert placement.stored is not None, "one byte over goes to Datastore"
        assert (placed(noise(960_000), **options).task is None) == (expected == "stored")


def test_a_payload_that_fits_only_compressed_travels_compressed_and_runs() -> None:
    blob = b"compressible " * 150_000  # 1.95 MB
    placement = placed(blob)
    assert placement.task is not None
    frame = decode(placement.task.http_request.body)
    assert frame.compressed
    assert task_bytes(placement.task) <= MAX_INLINE_TASK_BYTES
    with in_memory_queue() as queue:
        deferred.defer(tasks.digest, blob)
        assert queue.run_pending() == [HTTPStatus.OK]  # the handler inflates it
    assert RECORDER.named("digest") == [fingerprint(blob)]


def test_an_incompressible_payload_over_the_limit_is_stored_uncompressed() -> None:
    blob = noise(1_500_000)
    stored = placed(blob).stored
    assert stored is not None
    assert not decode(stored).compressed  # compression made it no smaller


def test_the_stored_frame_is_compressed_when_that_is_smaller() -> None:
    blob = noise(1_200_000) + bytes(6_000_000)  # too big even compressed, but shrinks
    stored = placed(blob).stored
    assert stored is not None
    frame = decode(stored)
    assert frame.compressed
    assert len(stored) < 1_300_000


def test_beyond_the_cap_nothing_is_written_or_sent() -> None:
    transport = InMemoryTransport()
    # ndb is off and Datastore unconfigured: any attempt to store would say so instead.
    with pytest.raises(PayloadTooLargeError, match=f"at most {MAX_STORED_BYTES:,}") as caught:
        Client(SETTINGS, transport=transport).defer(tasks.digest, noise(MAX_STORED_BYTES))
    assert isinstance(caught.value, Error)
    assert "pass a reference to the data" in str(caught.value)
    assert transport.tasks == []


def test_a_pickle_the_handler_would_not_inflate_is_refused_even_if_it_compresses() -> None:
    transport = InMemoryTransport()
    with pytest.raises(PayloadTooLargeError, match="unpickles at most"):
        Client(SETTINGS, transport=transport).defer(tasks.digest, bytes(MAX_PICKLE_BYTES))
    assert transport.tasks == []


def test_a_stored_payload_without_datastore_names_what_to_configure() -> None:
    transport = InMemoryTransport()
    with pytest.raises(ConfigurationError) as caught:
        Client(SETTINGS, transport=transport).defer(tasks.digest, noise(1_500_000))
    message = str(caught.value)
    assert message.startswith("a payload over Cloud Tasks' task size limit needs Datastore")
    assert "cloudtasks-deferred[ndb]" not in message  # installed: no hint to install it
    assert "DATASTORE_EMULATOR_HOST" in message
    assert transport.tasks == []


def test_app_engine_tasks_follow_the_same_rules() -> None:
    settings = dataclasses.replace(
        SETTINGS, base_url=None, service_account=None, platform=Platform.APP_ENGINE
    )
    client = Client(settings, transport=InMemoryTransport())
    parsed, _ = split_options({})
    build = task_builder(client, parsed, PARENT)
    placement = place(client, serialize(tasks.digest, b"y" * 2_000_000), {}, build)
    assert placement.task is not None
    assert decode(placement.task.app_engine_http_request.body).compressed
