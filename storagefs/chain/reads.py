"""Reads: what the chain answers for a key or a prefix, from the journal, the remotes or the cache.

Owns the read path: the journal overlay first (a pending PUT is served from the journal, a
pending DELETE is NotFound), then the remotes raced in read order (:mod:`storagefs.chain.racing`),
then, when no remote answers, the cache's clean copy, counted as a stale read
(``stale_reads``, ``last_stale_read``: only this class writes them). Whole small objects read
from a remote are handed to the cache filler. Listings merge the journal's pending names into
the remote's page (:mod:`storagefs.chain.listing`). Reads never change the journal, and report
reachability only through :class:`~storagefs.chain.reachability.Reachability`.
"""

from __future__ import annotations

import builtins
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import trio

from storagefs.backends.base import (
    Backend,
    BackendUnavailable,
    ListPage,
    NotFound,
    ObjectInfo,
    peek,
    seconds_to_ns,
)
from storagefs.chain import listing
from storagefs.chain.cache import Cache
from storagefs.chain.filling import CacheFiller, best_effort
from storagefs.chain.racing import AllDown, first_answer, race
from storagefs.chain.reachability import NOT_ANSWERING, Reachability
from storagefs.journal.store import ContentGone, Entry, Journal, Op

T = TypeVar("T")

log = logging.getLogger("storagefs.chain")

CACHE = "cache"  # the name the local copies go by in listing tokens


class Reads:
    def __init__(
        self, journal: Journal, cache: Cache, reach: Reachability, filler: CacheFiller
    ) -> None:
        self.journal = journal
        self.cache = cache
        self._reach = reach
        self._filler = filler
        self.stale_reads = 0
        self.last_stale_read: float | None = None  # wall clock

    def _stale(self, key: str) -> None:
        self.stale_reads += 1
        self.last_stale_read = time.time()
        log.debug("no remote answers: serving the cached copy of %r", key)

    @staticmethod
    def _unavailable(key: str, down: AllDown) -> BackendUnavailable:
        exc = BackendUnavailable(f"no backend answered for {key!r} and no cached copy exists")
        exc.__cause__ = down.last
        return exc

    # --- reads -----

    async def _through(
        self,
        op: str,
        key: str,
        entry: Entry | None,
        remote_op: Callable[[Backend, str], Awaitable[T]],
        local_op: Callable[[Entry], Awaitable[T]],
        *,
        hedge: bool = True,
    ) -> T:
        """The first answer for ``key`` from the remotes (see :meth:`_race`), each asked
        where the journal says (:meth:`Journal.resolve`); AllDown when none answers."""
        order = self._reach.read_order()
        where = self.journal.resolve(key, entry, order[0].name)
        if where is None:
            await trio.lowlevel.checkpoint()
            raise NotFound(key)
        if isinstance(where, Entry):
            return await local_op(where)

        async def ask(remote: Backend) -> T:
            where = self.journal.resolve(key, entry, remote.name)
            if where is None:
                await trio.lowlevel.checkpoint()
                raise NotFound(key)
            if isinstance(where, Entry):
                return await local_op(where)
            return await self._reach.ask(remote, functools.partial(remote_op, remote, where))

        cached = self.cache.enabled and self.cache.info(key) is not None
        return (await race(self._reach, op, order, ask, cached=cached, hedge=hedge))[1]

    @staticmethod
    def _pending_info(key: str, entry: Entry, metadata: Mapping[str, str] | None) -> ObjectInfo:
        return ObjectInfo(key, entry.size, seconds_to_ns(entry.created), None, dict(metadata or {}))

    async def stat(self, key: str) -> ObjectInfo:
        entry = self.journal.latest(key)
        if entry is not None and entry.op is not Op.COPY:
            await trio.lowlevel.checkpoint()
            if entry.op is Op.DELETE:
                raise NotFound(key)
            return self._pending_info(key, entry, entry.metadata)
        if entry is not None and entry.metadata is not None:
            await trio.lowlevel.checkpoint()
            return self._pending_info(key, entry, entry.metadata)

        async def local(put: Entry) -> ObjectInfo:
            await trio.lowlevel.checkpoint()
            return self._pending_info(key, put, put.metadata)

        try:
            info = await self._through("stat", key, entry, lambda r, k: r.stat(k), local)
        except AllDown as down:
            cached = self.cache.info(key)
            if cached is None:
                raise self._unavailable(key, down) from None
            self._stale(key)
            return cached
        if entry is not None:  # a pending COPY keeping its source's metadata
            return self._pending_info(key, entry, info.metadata)
        return info

    async def peek(self, key: str, length: int) -> tuple[ObjectInfo, bytes]:
        """stat + the first ``length`` bytes, in one request to a remote when nothing of the
        key is journaled (the overlay and the cache answer through stat and read)."""
        if self.journal.latest(key) is None:
            try:
                info, data = await first_answer(
                    self._reach,
                    "peek",
                    lambda r: peek(r, key, length),
                    cached=self.cache.info(key) is not None,
                )
            except AllDown:
                pass
            else:
                if len(data) >= info.size:  # the whole object: keep a clean copy, as read does
                    found = info
                    await self._filler.soon(lambda: self.cache.store_bytes(key, data, found))
                return info, data
        info = await self.stat(key)
        data = await self.read(key, 0, min(length, info.size)) if info.size else b""
        return info, data

    async def read(self, key: str, offset: int, length: int) -> bytes:
        async def local(put: Entry) -> bytes:
            return await self.journal.read_content(put, offset, length)

        for _ in range(3):  # a pending entry may finish while we read it: then ask again
            entry = self.journal.latest(key)
            try:
                data = await self._through(
                    "read", key, entry, lambda r, k: r.read(k, offset, length), local
                )
            except ContentGone:
                continue
            except AllDown as down:
                cached = await self.cache.read(key, offset, length)
                if cached is None:
                    raise self._unavailable(key, down) from None
                self._stale(key)
                return cached
            if entry is None and offset == 0 and len(data) < length:
                # The whole object came back in one read (small files, the usual `cat`): keep
                # a clean copy so it stays readable when no remote answers.
                info = ObjectInfo(key, len(data), time.time_ns())
                await self._filler.soon(functools.partial(self.cache.store_bytes, key, data, info))
            return data
        raise BackendUnavailable(f"{key!r} keeps changing under the read")

    async def download(self, key: str, dest: str) -> ObjectInfo:
        async def local(put: Entry) -> ObjectInfo:
            await self.journal.copy_content(put, dest)
            return self._pending_info(key, put, put.metadata)

        for _ in range(3):
            entry = self.journal.latest(key)
            try:
                info = await self._through(
                    "download", key, entry, lambda r, k: r.download(k, dest), local, hedge=False
                )
            except ContentGone:
                continue
            except AllDown as down:
                cached = await self.cache.download(key, dest)
                if cached is None:
                    raise self._unavailable(key, down) from None
                self._stale(key)
                return cached
            if entry is None:
                await best_effort(self.cache.store_copy(key, dest, info))
                return info
            if entry.op is Op.COPY:  # the content of a pending copy, under its new name
                meta = entry.metadata if entry.metadata is not None else info.metadata
                return ObjectInfo(key, info.size, info.mtime_ns, info.etag, meta)
            return info
        raise BackendUnavailable(f"{key!r} keeps changing under the download")

    async def list(
        self,
        prefix: str,
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        limit: int = 1000,
    ) -> ListPage:
        """One page of the merged view: the remote's page with the pending names of its name
        range merged in (so a page may hold a few more than ``limit`` names), in byte order
        within the page. A token stays valid across a failover (see chain_listing)."""
        state = listing.decode_token(token) if token is not None else None
        order = self._reach.read_order()
        names = [r.name for r in order]
        if state is not None and state.backend in names:
            start = names.index(state.backend)
            order = [order[start], *order[:start], *order[start + 1 :]]
        low = state.last if state is not None else None

        async def ask(remote: Backend) -> ListPage:
            inner = state.inner if state is not None and state.backend == remote.name else None
            return await self._reach.ask(
                remote,
                lambda: self._list_from(remote, prefix, delimiter, inner, low, limit),
            )

        down = AllDown(None)
        if state is None or state.backend != CACHE:
            try:
                remote, page = await race(self._reach, "list", order, ask)
            except AllDown as exc:
                down = exc
            else:
                return await self._finish_page(remote, page, prefix, delimiter, low)
        if not self.cache.enabled:
            raise self._unavailable(prefix, down)
        self._stale(prefix)
        page = listing.after(self.cache.listing(prefix, delimiter), low)
        return await self._finish_page(None, page, prefix, delimiter, low)

    async def _list_from(
        self,
        remote: Backend,
        prefix: str,
        delimiter: str | None,
        inner: str | None,
        low: str | None,
        limit: int,
    ) -> ListPage:
        if inner is not None or low is None:
            return await remote.list(prefix, delimiter=delimiter, token=inner, limit=limit)
        # Continuing another backend's listing: start over here, skipping what was returned.
        token: str | None = None
        while True:
            page = listing.after(
                await remote.list(prefix, delimiter=delimiter, token=token, limit=limit), low
            )
            if page.objects or page.prefixes or page.token is None:
                return page
            token = page.token

    async def _finish_page(
        self,
        remote: Backend | None,
        page: ListPage,
        prefix: str,
        delimiter: str | None,
        low: str | None,
    ) -> ListPage:
        high = listing.last_name(page) if page.token is not None else None
        if page.token is not None and high is None:
            high = low or ""
        pending = self.journal.latest_under(prefix)
        merged, suspects = listing.merge(page, pending, prefix, delimiter, low, high)
        if suspects and remote is not None:
            merged = listing.without(merged, await self._emptied(remote, suspects, pending))
        token = None
        if page.token is not None:
            backend = remote.name if remote is not None else CACHE
            token = listing.encode_token(listing.ChainToken(backend, page.token, high))
        return ListPage(merged.objects, merged.prefixes, token)

    async def _emptied(
        self, remote: Backend, prefixes: Sequence[str], pending: Mapping[str, Entry]
    ) -> builtins.list[str]:
        """Those ``prefixes`` under which every key on ``remote`` is deleted by the journal."""
        gone: builtins.list[str] = []
        for prefix in prefixes:
            token: str | None = None
            try:
                while True:
                    page = await remote.list(prefix, delimiter=None, token=token, limit=1000)
                    if listing.survivors((o.key for o in page.objects), pending):
                        break
                    if page.token is None:
                        gone.append(prefix)
                        break
                    token = page.token
            except NOT_ANSWERING as exc:
                self._reach.saw(remote.name, exc)  # keep the prefix: we cannot tell
        return gone
