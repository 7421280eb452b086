"""The dev key file: created atomically, so that processes starting at once share one key.

The same race with 20 real processes, each deferring through the emulator, is in
tests/integration/test_outages.py.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from cloudtasks_deferred import ConfigurationError
from cloudtasks_deferred.dev_key import DevKey


def test_processes_racing_for_the_dev_key_all_get_the_one_written(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "dev-key.pem"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: DevKey.load_or_create(path), range(16)))
    assert {key.kid for key in keys} == {DevKey.load_or_create(path).kid}
    assert [p.name for p in path.parent.iterdir()] == ["dev-key.pem"]  # no temporary left
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_dev_key_file_that_is_no_key_says_to_delete_it(tmp_path: Path) -> None:
    path = tmp_path / "dev-key.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIIE")  # cut short by an old crash
    with pytest.raises(ConfigurationError, match="does not hold a PEM private key") as caught:
        DevKey.load_or_create(path)
    assert str(path) in str(caught.value)
    assert "delete it" in str(caught.value)
