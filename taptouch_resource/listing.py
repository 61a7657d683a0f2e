"""Paging: the page rules of every listing (:class:`Paginator`), and order listings that know whether
they are complete (:class:`OrderListing`: keyset pages on the same rules, checked, with a verifying
pass by page number when the server's order cannot be trusted).

Why keyset pages, and what a listing may tell the sync afterwards: docs/client.md, "Paging".
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from . import api
from .errors import TaptouchProtocolError
from .retry import ClientStats

log = logging.getLogger(__name__)

Params = dict[str, Any]  # the query of one request


@dataclass(frozen=True)
class Page:
    """One answer of a listing: its records (exact bytes), the envelope's ``status.timestamp``, and
    the name of a field by which the server says more records follow (``has_more: true``; not in the
    contract), if it sent one."""

    records: list[bytes]
    timestamp: Any = None
    more: str | None = None


class RepeatGuard:
    """The full pages of one pass, in order: a page identical to the one before it (a server that
    ignores ``index``) or to any earlier one (pages that go round in a cycle) is an error. A pass of
    one page costs nothing: pages are hashed only once a second one comes."""

    def __init__(self, what: str):
        self.what = what
        self._previous: list[bytes] | None = None
        self._seen: dict[bytes, int] = {}  # digest of each full page -> its index

    def check(self, index: int, records: list[bytes]) -> None:
        """``records``: the full page at ``index`` (the pages before it were checked already)."""
        previous, self._previous = self._previous, records
        if previous is None:
            return
        if records == previous:
            raise TaptouchProtocolError(
                f"{self.what}: page {index} is identical to page {index - 1}; the server seems to ignore "
                f"the '{api.PARAM_INDEX}' parameter. Stopping instead of looping forever."
            )
        if not self._seen:
            self._seen[_digest(previous)] = index - 1
        digest = _digest(records)
        if digest in self._seen:
            raise TaptouchProtocolError(
                f"{self.what}: page {index} is identical to page {self._seen[digest]}; the server's pages "
                f"go round in a cycle. Stopping instead of looping forever."
            )
        self._seen[digest] = index


def _digest(records: list[bytes]) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    for record in records:
        hasher.update(len(record).to_bytes(8, "big") + record)
    return hasher.digest()


class Paginator:
    """The page rules of one listing: ``index``/``count`` pages of ``page_size`` records.

    ``fetch(params) -> Page`` performs one request (retries, the envelope: the client's job).
    :meth:`page` checks one answer (not longer than asked for; a short page is the last unless the
    server says more follow; counted in ``stats``); :meth:`paginate` walks the pages from ``index``
    0 to the first short page, refusing repeated pages and more than ``max_pages``.
    """

    def __init__(
        self,
        fetch: Callable[[Params], Page],
        *,
        page_size: int,
        max_pages: int,
        what: str,
        stats: ClientStats | None = None,
    ):
        self._fetch = fetch
        self.page_size, self.max_pages, self.what = page_size, max_pages, what
        self._stats = stats

    def page(self, params: Params) -> Page:
        """One checked answer to ``params`` (which carry its ``index`` and ``count``)."""
        page = self._fetch(params)
        count, index, size = params[api.PARAM_COUNT], params[api.PARAM_INDEX], len(page.records)
        if size > count:
            raise TaptouchProtocolError(
                f"{self.what}: page {index} holds {size} records, more than the {count} asked for; the listing "
                f"cannot be trusted to be complete. Stopping without loading this store."
            )
        if size < count and page.more is not None:
            raise TaptouchProtocolError(
                f"{self.what}: page {index} is the last by the contract's rule (fewer records than asked for) but "
                f"the server says {page.more}=true; the listing may be truncated. Stopping without loading this "
                f"store."
            )
        if self._stats is not None:
            self._stats.add(pages=1, records=size)
        return page

    def paginate(self, params: Params, *, confirm_end: bool = False) -> Iterator[list[bytes]]:
        """The records of every page of ``params`` (without ``index``/``count``), page by page.

        ``confirm_end``: a short page (the end) is asked for once more, and the records of its second
        answer that the first did not hold byte for byte are yielded too (a record changed between
        the two comes in both versions): a 200 answer cut short looks exactly like the end, so a
        second answer that is a full page means the first was cut, and the listing goes on. Two
        short answers of different sizes leave the end unknown: :class:`EndUnknown` (a
        TaptouchProtocolError carrying both answers' records)."""
        count = self.page_size
        guard = RepeatGuard(self.what)
        records = index = 0
        while True:
            if index >= self.max_pages:
                raise TaptouchProtocolError(
                    f"{self.what}: more than {self.max_pages} pages; stopping (raise max_pages if this is real)."
                )
            page = self.page({**params, api.PARAM_INDEX: index, api.PARAM_COUNT: count})
            fresh = page.records
            if len(page.records) < count and confirm_end:
                again = self.page({**params, api.PARAM_INDEX: index, api.PARAM_COUNT: count})
                if len(again.records) != len(page.records):
                    if len(again.records) < count:
                        raise EndUnknown(
                            f"{self.what}: the last page (page {index}) held {len(page.records)} records, and "
                            f"{len(again.records)} when asked again: where the listing ends is unknown, so it is "
                            f"not taken as complete. Stopping without loading this store; the next run asks again.",
                            first=page.records,
                            again=again.records,
                        )
                    log.warning(
                        "%s: page %d held %d records, and a full page when asked again; reading on",
                        self.what,
                        index,
                        len(page.records),
                    )
                held = set(page.records)
                fresh = page.records + [r for r in again.records if r not in held]
                page = again  # the second answer says whether the listing goes on
            if len(page.records) == count:
                guard.check(index, page.records)
            records += len(fresh)
            log.debug("%s: page %d, %d records", self.what, index, len(fresh))
            yield fresh
            if len(page.records) < count:
                break
            index += 1
        log.debug("%s: %d pages, %d records", self.what, index + 1, records)


class EndUnknown(TaptouchProtocolError):
    """The last (short) page answered two different short pages: where the listing ends is unknown
    (:meth:`Paginator.paginate` with ``confirm_end``). ``first``, ``again``: the two answers' records
    (neither was yielded)."""

    def __init__(self, message: str, *, first: list[bytes] | None = None, again: list[bytes] | None = None):
        super().__init__(message)
        self.first, self.again = list(first or []), list(again or [])


class _Key(msgspec.Struct):
    id: Any = None
    updated_at: Any = None


_KEY_DECODER = msgspec.json.Decoder(_Key)
# A server may compare ``updated_from`` at whole seconds: records up to a second before the cursor
# are extra (dropped as read), not a sign of disorder. Further back, it ignores ``updated_from``.
_GRAIN = timedelta(seconds=1)
# verifying passes after the first page-number pass, at most: until one finds the range held still
_VERIFYING_PASSES = 3
# page-number reads of one crowded second, at most: until one re-reads every version the read before served
_SECOND_READS = 4
_FRACTION = re.compile(r"(\.\d{6})\d+")
# what the record boundary accepts as an instant (RFC 3339: date, time, optional fraction, offset);
# week dates, basic format or a comma fraction would drive the cursor while the loader quarantines
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,30})?([Zz]|[+-]\d{2}(:?\d{2})?)")


def parse_instant(value: Any) -> datetime | None:
    """An ISO 8601 instant with an offset, floored to the microsecond (Python's precision); None
    when it is not one. Flooring keeps ``updated_from`` inclusive of the record it came from."""
    if not isinstance(value, str) or len(value) > 64 or not _INSTANT.fullmatch(value):
        return None
    try:
        at = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    try:
        return at.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def record_key(raw: bytes) -> tuple[Any, Any, datetime | None]:
    """(id, the version as sent, its instant) of one record's bytes; Nones where unreadable."""
    try:
        k = _KEY_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None, None, None
    oid = k.id if isinstance(k.id, (int, str)) and not isinstance(k.id, bool) else None
    version = k.updated_at if isinstance(k.updated_at, str) else None
    return oid, version, parse_instant(version)


_EARLIEST_CLOCK = 978307200  # 2001-01-01: an API clock before that is broken, not a clock
_CLOCK_AHEAD = 86400  # an API clock more than a day ahead of this machine's is not believed either
_CLOCKS_APART = timedelta(seconds=60)  # an API clock further ahead of this machine's is logged


def api_clock(timestamp: Any, *, local: float | None = None) -> datetime | None:
    """The instant a listing started on the API's clock: ``status.timestamp`` (Unix seconds, whole)
    floored, minus one second (a record stamped within that second may be newer than the answer).
    None when it is missing or not plausible (before 2001, or more than a day ahead of ``local``,
    this machine's clock): a hostile clock must not let a mark run ahead."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float, str)):
        return None
    try:
        seconds = float(timestamp)
    except (ValueError, OverflowError, TypeError):
        return None
    local = time.time() if local is None else local
    if not math.isfinite(seconds) or not _EARLIEST_CLOCK <= seconds <= local + _CLOCK_AHEAD:
        return None
    return datetime.fromtimestamp(math.floor(seconds), UTC) - timedelta(seconds=1)


def iso(ts: datetime | str) -> str:
    """ISO 8601 in UTC with an explicit offset (``+00:00``). A naive datetime is taken as UTC; a
    string is passed through as given."""
    if isinstance(ts, str):
        return ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat()


class OrderListing:
    """Pages (lists of each record's exact bytes) of one store's orders with ``updated_at`` in
    ``[updated_from, updated_to)``, read so that the listing knows whether it is complete.

    Iterate it for the pages. Afterwards (or while iterating):

    - ``complete``: True once exhausted, if every record that was in the range for the whole
      listing was read (keyset pages, each checked to be in order, or a verifying pass that found
      nothing the first pass missed). False while reading, and when a skip cannot be ruled out.
    - ``started_at``: when the listing started: the API's clock (floor of the first page's
      ``status.timestamp`` minus 1 s), or this machine's at the first request (floored, minus 1 s)
      when that is earlier: an API clock running ahead must not carry a mark past edits that real
      time has not reached. None when the server sent no usable timestamp.
    - ``newest``: the newest ``updated_at`` read (microsecond floor); None if none was readable.
    - ``verified``: True when the keyset pass had to be checked by a second pass.
    - ``late_tail``: True when ``complete`` rests on taking a record that only the last page's
      second answer held, stamped before the listing started (within ``late``), for a late arrival:
      a first answer cut short looks the same, so an order edited just before the listing may be
      missing from it. Enough to load and prove; the reconciliation confirms no deletion by it.
    - ``pages``, ``records``: answers read, records yielded (duplicates dropped).

    ``confirm_end``: ask for the last (short) page twice (in every read of a range); an empty or
    cut-short 200 answer looks exactly like the end of a listing. A second answer that is a whole
    page means the first was cut, and the listing reads on; one that differs otherwise makes it
    incomplete, unless it only adds a busy store's records (stamped after the listing started, or
    at most ``late`` before). One more request per read, and one per whole page (what follows a
    short answer for the range the cursor jumps over: :meth:`_jumped_range`): for listings that
    prove windows or deletions (every orders load, the reconciliation).

    ``paginator``: the listing's page rules; its :meth:`Paginator.page` reads each keyset page, its
    :meth:`Paginator.paginate` the page-number passes. ``params``: the query besides the range.
    """

    def __init__(
        self,
        paginator: Paginator,
        *,
        params: Params,
        updated_from: datetime | str,
        updated_to: datetime | str,
        confirm_end: bool = False,
        late: timedelta = timedelta(0),
        clock: Callable[[], float] = time.time,
    ):
        """``clock``: this machine's (Unix seconds; a test's fake clock). ``late``: how late a
        record may reach the API's listings (the run's lookback: a record stamped up to this long
        before the listing started may appear on the last page's second answer of a complete one)."""
        self._paginator = paginator
        self._clock = clock
        self._local_start: float | None = None  # this machine's clock at the first request
        self._params = params
        self.updated_from, self.updated_to = _utc(updated_from), _utc(updated_to)
        self._count, self._max_pages, self.what = paginator.page_size, paginator.max_pages, paginator.what
        self._confirm_end = confirm_end
        self._late = late
        self.complete = False
        self.started_at: datetime | None = None
        self.newest: datetime | None = None
        self.verified = False
        self.late_tail = False
        self.pages = 0
        self.records = 0
        self._seen: set[tuple[Any, Any]] = set()  # (id, version as sent) of every record yielded
        self._seen_ids: set[Any] = set()
        self._missed = 0
        self._listed: dict[tuple[Any, Any], bool] | None = None  # what a page-number pass read (_by_page_number)
        # stepped by page number past records whose instants could not be read, or a last page
        # that answered differently when asked again: never complete
        self._doubtful = False
        self._it = self._run()

    def __iter__(self) -> OrderListing:
        return self

    def __next__(self) -> list[bytes]:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    # -- the two passes ------------------------------------------------------------------------
    def _run(self) -> Generator[list[bytes], None, None]:
        self._local_start = self._clock()
        in_order = yield from self._keyset()
        if in_order:
            self.complete = not self._doubtful
            return
        self.verified = True
        log.warning(
            "%s: the API's pages were not in updated_at order; reading the range by page number, then "
            "once more to verify it",
            self.what,
        )
        previous, shifted = yield from self._by_page_number(verifying=False)
        for _ in range(_VERIFYING_PASSES):
            listed, shifted_now = yield from self._by_page_number(verifying=True)
            # a pass that served a record twice had its pages shifted by something inserted behind
            # its reader, which may have left again unread (an order created and deleted during the
            # pass) and skipped a record: that pass proves nothing about the one after it
            if self._missed == 0 and not shifted and _held_still(previous, listed):
                self.complete = not self._doubtful
                return
            previous, shifted = listed, shifted_now
        log.warning(
            "%s: %d verifying passes found record(s) the passes before them had missed, or the range changed "
            "under each (on a server not in updated_at order an edit shifts the pages, and two passes can "
            "skip the same record); the listing may be incomplete, so no high-water mark moves from it",
            self.what,
            _VERIFYING_PASSES,
        )

    def _keyset(self) -> Generator[list[bytes], None, bool]:
        """Keyset pages; returns False at the first page that is out of order (the rest is then
        left to the page-number passes)."""
        cursor, index = self.updated_from, 0
        guard = RepeatGuard(self.what)  # pages at one cursor: only a page of unreadable instants stays on it
        again: Page | None = None  # a short page's second answer that came back whole
        while True:
            page, again = (again if again is not None else self._keyset_page(cursor, index)), None
            if len(page.records) == self._count:
                guard.check(index, page.records)
            fresh, instants, in_order = self._take(page.records, cursor)
            if fresh:
                yield fresh
            if not in_order:
                return False
            if len(page.records) < self._count:
                if not self._confirm_end:
                    return True
                again = self._keyset_page(cursor, index)
                if len(again.records) == self._count:  # the first answer was cut short: read on
                    log.warning(
                        "%s: a page held %d records, and a full page when asked again; reading on",
                        self.what,
                        len(page.records),
                    )
                    continue
                yield from self._confirm_last(again, page.records)
                return True
            last = max(instants, default=None)
            if last is not None and last > cursor:
                if index == 0:
                    below = sum(1 for at in instants if at < last)
                    held = yield from self._jump_holds(page.records, below, cursor, last)
                    if not held:
                        return False
                cursor, index, guard = last, 0, RepeatGuard(self.what)
            elif last is not None:  # a whole page that does not move the cursor: read its second alone
                second = cursor.replace(microsecond=0)
                served = yield from self._one_second(second)
                if not served:  # the server cannot read one second on its own: the page-number passes
                    return False
                cursor, index, guard = second + _GRAIN, 0, RepeatGuard(self.what)
            else:  # a whole page of unreadable instants: page numbers (such a listing is never complete)
                index, self._doubtful = index + 1, True

    def _jump_holds(
        self, records: list[bytes], below: int, cursor: datetime, last: datetime
    ) -> Generator[list[bytes], None, bool]:
        """Whether ``[cursor, last)``, which the cursor is about to jump over, holds only what the
        whole page ``records`` held (read at ``cursor``, index 0; ``below`` of them stamped before
        ``last``). A page in ``updated_at`` order proves nothing about the pages after it: a server
        sorted by id or by creation serves an order edited late at the end of a page that looks in
        order, and the cursor would jump over later pages' earlier records. So that range is asked
        for once more, in one request of up to twice the page size (at most 500): an order that left
        the range meanwhile makes room, never hides another, and there is room for records that
        reach the range late. A server in order answers with the page's own ``below`` records; an
        empty or cut 200 answer may look so too (:meth:`_jumped_range`). A record the page did not
        hold, stamped before the listing started (less ``late``), means the server's order cannot be
        trusted (False: the page-number passes). Later ones are a busy store's, read here; when they
        fill the answer and what follows it could not be shown to end the range (:meth:`_jumped_range`),
        the listing is not complete. These requests are not among the listing's ``pages``."""
        count = min(2 * self._count, api.MAX_PAGE_SIZE)  # room for records that reach the range late
        # to the next whole second: a server reading updated_to at whole seconds would leave out
        # [floor(last), last); what lies at or after ``last`` is the cursor's to read
        upto = last if last.microsecond == 0 else min(last.replace(microsecond=0) + _GRAIN, self.updated_to)
        params = {
            **self._params,
            api.PARAM_UPDATED_FROM: iso(cursor),
            api.PARAM_UPDATED_TO: iso(upto),
            api.PARAM_INDEX: 0,
            api.PARAM_COUNT: count,
        }
        answer, whole = self._jumped_range(params, below)
        if answer == records[:below]:  # a server in order: the page's own records
            return True
        held = {record_key(r)[0] for r in records}
        others = [r for r in answer if _jumped(record_key(r), held, last)]
        if not others and whole:  # what follows a whole answer is unseen, and may hold what the cursor skips
            log.warning(
                "%s: the range the listing's cursor was about to jump over filled a whole answer; reading the "
                "range by page number instead",
                self.what,
            )
            return False
        if not others:  # the page's records, or later ones (a server loose with updated_to)
            return True
        if not self._moved_on([], others):
            log.warning(
                "%s: the range the listing's cursor was about to jump over holds %d record(s) its page "
                "did not: the API's pages are not in updated_at order",
                self.what,
                len(others),
            )
            return False
        if whole:  # what follows a whole answer is unseen
            self._doubtful = True
            log.warning(
                "%s: the range the listing's cursor was about to jump over filled a page with records that "
                "reached it late; the listing is not trusted to be complete",
                self.what,
            )
        fresh, _, _ = self._take(others, None)
        if fresh:
            yield fresh
        return True

    def _keyset_page(self, cursor: datetime, index: int) -> Page:
        self._bound()
        page = self._paginator.page(
            {**self._params, api.PARAM_UPDATED_FROM: iso(cursor), api.PARAM_INDEX: index, api.PARAM_COUNT: self._count}
        )
        self._started(page)
        return page

    def _jumped_range(self, params: Params, below: int) -> tuple[list[bytes], bool]:
        """(what the answers for the range a cursor is about to jump over held, whether what follows
        them is unseen). An empty or cut 200 answer hides what it leaves out: one short of the page's
        own ``below`` records is asked for once more, and both are read. One that is not may still be
        cut, and cut to exactly the page's own records it looks like a server in order (a server
        sorted by id puts the records the cursor would skip after them); and what follows a whole
        answer is unseen. So what follows a whole answer, and in a listing that proves windows or
        deletions (``confirm_end``) a short one, is asked for by page number from the answer's last
        record on (``index`` 1, ``count`` one less than the answer): a server in order answers that
        record alone (one small request). Any other first record (a record that left the range in
        between shifted the pages; a server that ignores ``index``), or a whole answer, proves
        nothing: a short answer's range is asked for once more from its first page (leaving makes
        room there, never hides), and what follows a whole one stays unseen. What follows a whole
        answer is asked for twice (a short answer may be cut), and proves its end only if both agree."""
        count = params[api.PARAM_COUNT]
        answer = self._paginator.page(params).records
        short = len(answer) < count
        if short and len(answer) >= below and not self._confirm_end:
            return answer, False
        if len(answer) < below or (short and len(answer) < 3):  # nothing to ask what follows from
            again = self._paginator.page(params).records
            return _union(answer, again), len(again) == count
        size = len(answer) - 1
        after = {**params, api.PARAM_INDEX: 1, api.PARAM_COUNT: size}
        follow = self._paginator.page(after).records
        aligned = follow[:1] == answer[-1:] and len(follow) < size
        if aligned and not short:  # the end of the range, in a short answer that may be cut too: asked twice
            again = self._paginator.page(after).records
            if again != follow:
                return _union(_union(answer, follow), again), True
        if aligned:
            return _union(answer, follow), False
        if short:
            again = self._paginator.page(params).records
            return _union(answer, again), len(again) == count
        return _union(answer, follow), True

    def _confirm_last(self, again: Page, records: list[bytes]) -> Generator[list[bytes], None, None]:
        """The last (short) page's second answer (``again``, also short): an empty or cut-short 200
        answer looks exactly like the end of a listing. A second answer that differs makes the
        listing incomplete (what it adds is read), unless all it adds are records of a busy store:
        stamped after the listing started, or at most ``late`` before (a record reaching the API's
        listing late, which the next run's lookback covers; ``late_tail`` then says the listing
        rests on that reading)."""
        if again.records == records:
            return
        if self._moved_on(records, again.records):
            self._late_reading(records, again.records)  # a late arrival, or an answer cut short: they look the same
        else:
            self._doubtful = True
            log.warning(
                "%s: the last page answered differently when asked again (%d then %d records); the "
                "listing is not trusted to be complete",
                self.what,
                len(records),
                len(again.records),
            )
        fresh, _, _ = self._take(again.records, None)
        if fresh:
            yield fresh

    def _late_reading(self, first: list[bytes], again: list[bytes]) -> None:
        """``late_tail`` when ``again`` (taken by :meth:`_moved_on`) adds a version stamped before
        the listing started: a late arrival, or a first answer cut short."""
        held = {_version(r) for r in first}
        self.late_tail = self.late_tail or any(
            at is not None and self.started_at is not None and at < self.started_at
            for _, _, at in (record_key(r) for r in again if _version(r) not in held)
        )

    def _moved_on(self, first: list[bytes], again: list[bytes]) -> bool:
        """Whether a last page's second answer differs from its first only as a busy store's does:
        every id of the first is in it, and all it adds is stamped after the listing started (an
        order edited meanwhile moves to the end), or at most ``late`` before (a record reaching the
        listing late). Anything else that differs is an answer cut short."""
        first_ids = {record_key(r)[0] for r in first}
        again_ids = {record_key(r)[0] for r in again}
        held = {_version(r) for r in first}  # a version by its instant: replicas may render it differently
        added = [record_key(r) for r in again if _version(r) not in held]
        return first_ids <= again_ids and all(
            at is not None and self.started_at is not None and at >= self.started_at - self._late for _, _, at in added
        )

    def _one_second(self, second: datetime) -> Generator[list[bytes], None, int]:
        """Every record in ``[second, second + 1 s)``, where a whole page did not move the cursor (a
        page or more of records at one instant, or a server that compares ``updated_from`` at whole
        seconds), by page number, until a read served again every version the read before it served
        (at least twice, at most :data:`_SECOND_READS` times, else the listing is not complete): a
        record that moves away during a read shifts its pages, and one that moves away during the
        next read can make it skip the same record. Returns how many records the reads served (0:
        the server cannot read so narrow a range)."""
        params = {**self._params, api.PARAM_UPDATED_FROM: iso(second), api.PARAM_UPDATED_TO: iso(second + _GRAIN)}
        served = 0
        previous: set[Any] | None = None
        shifted = False
        for read in range(_SECOND_READS):
            listed: set[Any] = set()
            ids = _ServedTwice()
            for records in self._numbered(params, final=read >= 1):
                self._bound()
                served += len(records)
                listed.update(_version(r) for r in records)
                ids.page(records)
                fresh, _, _ = self._take(records, None)
                if fresh:
                    yield fresh
            # a version an earlier read served and this one did not left the second (an edit moves
            # it forward) and shifted this read's pages: the record at a page boundary may have
            # been skipped by both reads, so the second is read again until it held still. So did
            # a record served twice by the earlier read (something inserted behind its reader,
            # which may have left again unread)
            if previous is not None and not shifted and previous <= listed:
                return served
            previous, shifted = listed, ids.twice
        self._doubtful = True
        log.warning(
            "%s: the orders of %s changed under each of %d page-number reads; the listing is not trusted to be "
            "complete",
            self.what,
            iso(second),
            _SECOND_READS,
        )
        return served

    def _numbered(self, params: Params, *, final: bool) -> Iterator[list[bytes]]:
        """The pages of ``params`` by page number (:meth:`Paginator.paginate`), each counted. With
        ``confirm_end`` each read's last (short) page is asked for twice: an empty or cut answer
        looks like the end, and two reads of a range could each stop short at another page. Two
        short answers of different sizes end the read, and both answers' records are read. The
        second read of the range (``final``) then leaves the listing doubtful unless its second
        answer only adds a busy store's records (:meth:`_moved_on`); the first read's is checked by
        the second (on an unsorted server a new record shifts the pages, so a first read's last page
        may well answer differently)."""
        try:
            for records in self._paginator.paginate(params, confirm_end=self._confirm_end):
                self._started(Page(records))
                yield records
        except EndUnknown as exc:
            self._started(Page(exc.first))
            self._started(Page(exc.again))
            held = set(exc.first)
            yield exc.first + [r for r in exc.again if r not in held]
            if final and self._moved_on(exc.first, exc.again):
                self._late_reading(exc.first, exc.again)  # a late arrival, or both answers cut short
            elif final:
                self._doubtful = True
                log.warning(
                    "%s: a page-number read's last page answered %d then %d records; what both held is read, "
                    "and the listing is not trusted to be complete",
                    self.what,
                    len(exc.first),
                    len(exc.again),
                )

    def _bound(self) -> None:
        if self.pages >= self._max_pages:
            raise TaptouchProtocolError(
                f"{self.what}: more than {self._max_pages} pages; stopping (raise max_pages if this is real)."
            )

    def _by_page_number(
        self, *, verifying: bool
    ) -> Generator[list[bytes], None, tuple[dict[tuple[Any, Any], bool], bool]]:
        """The whole range by page number (the client's loop guards apply). Returns every (id,
        version) the pass read, each with whether it was stamped at or after the listing started,
        less ``late`` (a new arrival), for :func:`_held_still`; and whether a page served an id an
        earlier page of the pass served (:class:`_ServedTwice`). ``verifying``: ``_missed`` counts
        the records older than the listing's start this pass found that no earlier pass read."""
        params = {**self._params, api.PARAM_UPDATED_FROM: iso(self.updated_from)}
        self._missed = 0
        self._listed = {}
        ids = _ServedTwice()
        for records in self._numbered(params, final=verifying):
            ids.page(records)
            fresh, _, _ = self._take(records, None, verifying=verifying)
            if fresh:
                yield fresh
        listed, self._listed = self._listed, None
        return listed, ids.twice

    # -- one page --------------------------------------------------------------------------------
    def _started(self, page: Page) -> None:
        self.pages += 1
        if self.pages == 1:
            local = self._clock() if self._local_start is None else self._local_start
            api_at = api_clock(page.timestamp, local=local)
            here = datetime.fromtimestamp(math.floor(local), UTC) - timedelta(seconds=1)
            self.started_at = None if api_at is None else min(api_at, here)
            if api_at is not None and api_at - here > _CLOCKS_APART:
                log.warning(
                    "%s: the API's clock is %d s ahead of this machine's: the listing counts from this "
                    "machine's (a mark never passes it); check either clock",
                    self.what,
                    (api_at - here).total_seconds(),
                )

    def _take(
        self, records: list[bytes], cursor: datetime | None, verifying: bool = False
    ) -> tuple[list[bytes], list[datetime], bool]:
        """(records not read before, the readable instants of the page, whether the page is in
        order within [cursor, updated_to)). ``verifying``: count the records older than the
        listing's start whose id the first pass never read (``_missed``)."""
        fresh: list[bytes] = []
        instants: list[datetime] = []
        in_order = True
        previous: datetime | None = None
        for raw in records:
            oid, version, at = record_key(raw)
            if at is not None:
                if (
                    (previous is not None and at < previous)
                    or (cursor is not None and at < cursor - _GRAIN)
                    or at >= self.updated_to
                ):
                    in_order = False
                previous = at
                instants.append(at)
                if at < self.updated_to and (self.newest is None or at > self.newest):
                    self.newest = at
            if oid is not None:
                key = (oid, version)
                if self._listed is not None:  # a version by its instant: replicas may render it differently
                    new = at is not None and self.started_at is not None and at >= self.started_at - self._late
                    self._listed[(oid, version if at is None else at)] = new
                if key in self._seen:
                    continue
                if (
                    verifying
                    and oid not in self._seen_ids
                    and (at is None or self.started_at is None or at < self.started_at)
                ):
                    self._missed += 1
                self._seen.add(key)
                self._seen_ids.add(oid)
            fresh.append(raw)
        self.records += len(fresh)
        return fresh, instants, in_order


class _ServedTwice:
    """The ids one page-number read served, page by page. ``twice``: a page served an id an earlier
    page of the read served. Read by page number, a record inserted behind the reader (an order
    created, or edited to an earlier place of the server's order) shifts every later record one
    place back, and the record at the next page boundary is served twice; if it then leaves again
    unread (an order created and deleted during the read), every record shifts forward and one is
    skipped, and no version read shows it. A read that served nothing twice had no such shift."""

    def __init__(self) -> None:
        self._ids: set[Any] = set()
        self.twice = False

    def page(self, records: list[bytes]) -> None:
        ids = {oid for oid, _, _ in (record_key(r) for r in records) if oid is not None}
        self.twice = self.twice or not ids.isdisjoint(self._ids)
        self._ids |= ids


def _held_still(before: dict[tuple[Any, Any], bool], after: dict[tuple[Any, Any], bool]) -> bool:
    """Whether the range held still for the page-number pass that read ``after`` (the one before it
    read ``before``; each maps (id, version) to whether it is a new arrival). Read by page number, a
    record that leaves the range or moves later in the server's order shifts every record after it
    one place forward, and the record at the next page boundary is skipped. Each such change shows
    as a version ``before`` read and ``after`` did not: every version read before must be read again,
    and all ``after`` adds must be new arrivals (a record inserted shifts the others back: read twice,
    never skipped)."""
    return before.keys() <= after.keys() and all(after[key] for key in after.keys() - before.keys())


def _union(first: list[bytes], then: list[bytes]) -> list[bytes]:
    held = set(first)
    return first + [r for r in then if r not in held]


def _version(raw: bytes) -> Any:
    """A record's version: (id, instant) where both can be read (two replicas may render one
    instant differently), else its bytes."""
    oid, _, at = record_key(raw)
    return raw if oid is None or at is None else (oid, at)


def _jumped(key: tuple[Any, Any, datetime | None], held: set[Any], last: datetime) -> bool:
    """Whether a record (its :func:`record_key`) answered for the range a cursor jumps over to
    ``last`` is one the page did not hold (``held``: its ids) and lies in that range: a server
    comparing ``updated_to`` at whole seconds, or not at all, also answers later records, which the
    cursor reaches."""
    oid, _, at = key
    return oid not in held and (at is None or at < last)


def _utc(ts: datetime | str) -> datetime:
    if isinstance(ts, str):  # the client's methods also accept an ISO string
        parsed = parse_instant(ts)
        if parsed is None:
            raise ValueError(f"not an ISO 8601 instant with an offset: {ts!r}")
        return parsed
    return (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts).astimezone(UTC)
