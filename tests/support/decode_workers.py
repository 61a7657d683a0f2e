"""Re-run a test module's loads with every orders page decoded in a worker process.

A module that does ``from tests.support.decode_workers import through_workers`` and imports another
module's tests re-collects them with every ``OrderWindowLoad`` (whatever its ``decode_processes``)
handing each page, however small, to one worker process (:mod:`pipelines.warehouse.decode`). The
tests' own expectations then hold for the worker path. The fixture fails the module if a page
handed over was not answered by the worker (the loader would have decoded it itself) or if no page
was answered at all (the re-run would prove nothing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.warehouse import decode


class CountingWorkers(decode.DecodeWorkers):
    """Counts the pages handed over and those a worker answered (groups or the page's error)."""

    submitted = 0
    answered = 0

    def submit(self, args):
        fut = super().submit(args)
        if fut is not None:
            self.submitted += 1
            fut.add_done_callback(self._answered)
        return fut

    def _answered(self, fut) -> None:
        if not isinstance(fut.exception(), decode.WorkerLost):
            self.answered += 1


@pytest.fixture(scope="module", autouse=True)
def through_workers() -> Iterator[CountingWorkers]:
    workers = CountingWorkers(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode, "MIN_WORKER_PAGE", 1)
        mp.setattr(decode, "shared", lambda processes: workers)
        yield workers
    workers.close()
    assert workers.answered > 0, "no page reached the decode worker"
    assert workers.answered == workers.submitted, f"{workers.submitted - workers.answered} page(s) lost a worker"
