"""Re-run a test module's loads with every orders page decoded in a worker process.

A module that does ``from tests.support.decode_workers import through_workers`` and imports another
module's tests re-collects them with every ``OrderWindowLoad`` (whatever its ``decode_processes``)
handing each page, however small, to one worker process (:mod:`pipelines.warehouse.decode`). The
tests' own expectations then hold for the worker path; the fixture fails the module if no page
reached the worker (the re-run would prove nothing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.warehouse import decode


class CountingWorkers(decode.DecodeWorkers):
    submitted = 0

    def submit(self, args):
        fut = super().submit(args)
        if fut is not None:
            self.submitted += 1
        return fut


@pytest.fixture(scope="module", autouse=True)
def through_workers() -> Iterator[CountingWorkers]:
    workers = CountingWorkers(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode, "MIN_WORKER_PAGE", 1)
        mp.setattr(decode, "shared", lambda processes: workers)
        yield workers
    workers.close()
    assert workers.submitted > 0, "no page reached the decode worker"
