"""Adapters read ahead of need and kept in memory after they leave their slot.

With more adapters than slots, a request often names an adapter that is not resident. Reading it (files, checks,
folding: 10-40 ms for the benchmark's SmolLM2 adapters) on the model thread would stall every running row, so the
server asks for the read when the request arrives (`prefetch`, on a reader thread) and the model thread admits the
request once the read is done. Read adapters stay here, least recently used dropped first, within `max_bytes`: an
adapter evicted from its slot comes back with a memory copy. A copy whose files changed on disk (size or mtime) is
read again, and `forget` (adapter unload) drops it, so a later request reads the files afresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

Signature = tuple  # (size, mtime_ns) of each file of the adapter: a changed file means a stale copy


class HostStore:
    def __init__(self, read: Callable[[str], Any], files: Callable[[str], list[Path]], max_bytes: int) -> None:
        """`read(name)`: a PreparedAdapter (has .nbytes); `files(name)`: the adapter's files, for freshness."""
        self._read, self._files, self.max_bytes = read, files, max_bytes
        self._kept: OrderedDict[str, tuple[Signature, Any]] = OrderedDict()  # least recently used first
        self._pending: dict[str, tuple[Future, Signature | None]] = {}  # the files' signature before the read
        self._bytes = 0
        self._lock = threading.Lock()
        self._reader: ThreadPoolExecutor | None = None  # started on first use, again after close()

    def _signature(self, name: str) -> Signature | None:
        try:
            return tuple((s.st_size, s.st_mtime_ns) for s in (path.stat() for path in self._files(name)))
        except Exception:  # unknown name, a vanished file: not cacheable, the read reports the real problem
            return None

    def _fresh(self, name: str) -> Any | None:
        """The kept copy if its files did not change since it was read (caller holds the lock)."""
        kept = self._kept.get(name)
        if kept is None:
            return None
        if kept[0] != self._signature(name):
            self._drop(name)
            return None
        self._kept.move_to_end(name)
        return kept[1]

    def ready(self, name: str) -> bool:
        """True when `take(name)` will not wait for the disk; otherwise starts the read (if not started)."""
        with self._lock:
            if self._fresh(name) is not None:
                return True
            pending = self._pending.get(name)
        if pending is None:
            self.prefetch(name)
            return False
        return pending[0].done()

    def prefetch(self, name: str) -> None:
        """Start reading `name` on the reader thread unless a fresh copy is kept or a read is under way."""
        with self._lock:
            if name in self._pending or self._fresh(name) is not None:
                return
            signature = self._signature(name)
            if self._reader is None:
                self._reader = ThreadPoolExecutor(1, thread_name_prefix="lorakit-adapter-reader")
            future = self._reader.submit(self._read, name)
            self._pending[name] = (future, signature)
        future.add_done_callback(lambda done: self._arrived(name, done))

    def _arrived(self, name: str, future: Future) -> None:
        with self._lock:
            pending = self._pending.get(name)
            if pending is not None and pending[0] is future and not future.cancelled() \
                    and future.exception() is None:
                del self._pending[name]  # a failed read stays pending: `take` hands its error to the requests
                self._keep(name, pending[1], future.result())

    def take(self, name: str) -> Any:
        """The adapter read: the kept copy, the pending read's result (waiting for it), or a read now."""
        with self._lock:
            prepared = self._fresh(name)
            pending = self._pending.pop(name, None) if prepared is None else None
        if prepared is not None:
            return prepared
        if pending is None:
            signature = self._signature(name)
            prepared = self._read(name)
        else:  # raises the read's error: the caller fails the requests for `name`
            prepared, signature = pending[0].result(), pending[1]
        with self._lock:
            self._keep(name, signature, prepared)
        return prepared

    def put(self, name: str, prepared: Any) -> None:
        """A copy read elsewhere (an explicit load): replaces the kept one."""
        with self._lock:
            self._pending.pop(name, None)
            self._keep(name, self._signature(name), prepared)

    def forget(self, name: str) -> None:
        with self._lock:
            self._pending.pop(name, None)
            self._drop(name)

    def close(self) -> None:
        """Stop the reader thread (reads not started are cancelled; their requests read when they run)."""
        with self._lock:
            reader, self._reader = self._reader, None
            for name in [n for n, (future, _) in self._pending.items() if future.cancel()]:
                del self._pending[name]
        if reader is not None:
            reader.shutdown(wait=False, cancel_futures=True)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __contains__(self, name: str) -> bool:
        return name in self._kept

    def holds(self, name: str, prepared: Any) -> bool:
        """Whether the copy kept for `name` is this very object."""
        kept = self._kept.get(name)
        return kept is not None and kept[1] is prepared

    # -- the caller holds the lock ---------------------------------------------------------------------------------
    def _keep(self, name: str, signature: Signature | None, prepared: Any) -> None:
        self._drop(name)
        size = prepared.nbytes
        if signature is None or size > self.max_bytes:  # no way to tell it fresh later, or too big to keep
            return
        while self._kept and self._bytes + size > self.max_bytes:
            self._drop(next(iter(self._kept)))
        self._kept[name] = (signature, prepared)
        self._bytes += size

    def _drop(self, name: str) -> None:
        kept = self._kept.pop(name, None)
        if kept is not None:
            self._bytes -= kept[1].nbytes
