"""Dynamic batching: concurrent requests become one mixed-adapter batch, each row with its own adapter(s).

One model thread owns the model and the adapter cache. It takes the first waiting request, waits up to
`batch_window_s` for more (up to `max_batch_size` rows, at most `max_resident` distinct adapters), makes their
adapters resident, and generates for all rows together; requests arriving meanwhile form the next batch. Adapter
loads / unloads from the HTTP side are queued as commands and run between batches, so a running batch never sees
its slots change. Results go back through each request's `emit` / `finish` / `fail` callbacks (called on the model
thread: the HTTP side hands them over to its event loop).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from lorakit.errors import LorakitError
from lorakit.serve.cache import AdapterCache, UnknownAdapter
from lorakit.serve.generation import Row, SamplingParams, eos_token_ids, generate_batch, max_positions_of
from lorakit.serve.metrics import Metrics

logger = logging.getLogger("lorakit.serve")


@dataclass
class EngineSettings:
    max_batch_size: int = 8  # rows per batch
    batch_window_s: float = 0.01  # how long the first request of a batch waits for company
    max_queue: int = 256  # waiting requests beyond this are refused (HTTP 429)


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    adapters: list[tuple[str, float]]  # [] = the base model
    label: str  # for metrics: "base", the adapter name, or "composition"
    emit: Callable[[str], None]
    finish: Callable[[str, int], None]
    fail: Callable[[int, str], None]  # (HTTP status, message)
    created: float = field(default_factory=time.perf_counter)
    cancel: threading.Event = field(default_factory=threading.Event)
    request_id: str = "-"  # the response id (cmpl-..., chatcmpl-...): in the log and in error messages


class QueueFull(LorakitError):
    """More requests are waiting than the server accepts."""


class Engine:
    def __init__(self, model, tokenizer, cache: AdapterCache, settings: EngineSettings | None = None,
                 metrics: Metrics | None = None) -> None:
        self.model, self.tokenizer, self.cache = model, tokenizer, cache
        self.settings = settings or EngineSettings()
        self.metrics = metrics or Metrics()
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.max_positions = max_positions_of(model)
        self._requests: queue.Queue[Request] = queue.Queue()
        self._commands: queue.Queue[tuple[Callable[[], object], Future]] = queue.Queue()
        self._held: list[Request] = []  # taken from the queue but left for the next batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lorakit-model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.cache.close()

    # -- called from the HTTP side ---------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        if self.queue_depth() >= self.settings.max_queue:
            raise QueueFull(f"{self.settings.max_queue} requests are already waiting; retry shortly")
        self._requests.put(request)
        self.cache.prefetch([name for name, _ in request.adapters])  # read ahead, off the model thread
        self.metrics.set("lorakit_queue_depth", {}, self._requests.qsize())

    def queue_depth(self) -> int:
        return self._requests.qsize() + len(self._held)

    def run_command(self, command: Callable[[], object]) -> Future:
        """Run `command` on the model thread between batches; the future holds its result or exception."""
        future: Future = Future()
        self._commands.put((command, future))
        return future

    # -- the model thread -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                self._run_commands()
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    self._run(batch)
                except Exception as exc:  # e.g. an adapter file unreadable mid-load: fail the batch, keep serving
                    _fail_batch(batch, exc)

    def _run_commands(self) -> None:
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(command())
            except BaseException as exc:  # handed back to the caller, never kills the model thread
                future.set_exception(exc)

    def _next_batch(self) -> list[Request]:
        """Wait for a request, give others `batch_window_s` to arrive, then take what fits (FIFO)."""
        if not self._held:
            try:
                self._held.append(self._requests.get(timeout=0.05))
            except queue.Empty:
                return []
        deadline = time.perf_counter() + self.settings.batch_window_s
        while len(self._held) < self.settings.max_batch_size and (left := deadline - time.perf_counter()) > 0:
            try:
                self._held.append(self._requests.get(timeout=left))
            except queue.Empty:
                break
        return self._take(self.settings.max_batch_size, set(), joining=False)

    def _take(self, room: int, adapters: set[str], joining: bool) -> list[Request]:
        """Waiting requests, oldest first, while they fit in `room` rows and the resident adapter slots together
        with `adapters` (the running rows'); stops at the first that does not fit, so no request starves. Joining a
        running batch, it also stops at a request whose adapter is still being read: the batch goes on meanwhile."""
        taken: list[Request] = []
        while len(taken) < room:
            if not self._held:
                try:
                    self._held.append(self._requests.get_nowait())
                except queue.Empty:
                    break
            request = self._held[0]
            names = {name for name, _ in request.adapters}
            if not request.cancel.is_set():
                if len(adapters | names) > self.cache.max_resident:
                    break
                if joining and not all(self.cache.ready(name) for name in names):
                    break
                taken.append(request)
                adapters |= names
            self._held.pop(0)
        self.metrics.set("lorakit_queue_depth", {}, self.queue_depth())
        return taken

    def _run(self, batch: list[Request]) -> None:
        """Generate for `batch`; requests that arrive meanwhile join it between steps (continuous batching),
        unless management commands wait: then the batch drains and the commands run."""
        requests = self._make_resident(batch, pinned=[])
        rows = [self._row(request) for request in requests]

        def set_rows(indices: list[int]) -> None:
            plan = self.cache.plan([requests[i].adapters for i in indices])
            for layer in self.cache.layers():
                layer.mixed_rows = plan
            self.metrics.observe("lorakit_batch_size", {}, len(indices))

        def admit(live: list[int]) -> list[Row]:
            if not self._commands.empty():
                return []
            running = {name for i in live for name, _ in requests[i].adapters}
            joining = self._take(self.settings.max_batch_size - len(live), set(running), joining=True)
            joining = self._make_resident(joining, pinned=sorted(running))
            requests.extend(joining)
            new_rows = [self._row(request) for request in joining]
            rows.extend(new_rows)
            return new_rows

        try:
            if rows:
                generate_batch(self.model, self.tokenizer, rows, set_rows, self.eos_ids, self.max_positions, admit)
        except Exception as exc:  # a failure of the whole batch (its forward) fails its requests, never the server
            _fail_batch([request for request, row in zip(requests, rows, strict=True) if not row.done], exc)
        finally:
            for layer in self.cache.layers():
                layer.mixed_rows = None
        self.metrics.set("lorakit_adapters_resident", {}, len(self.cache.resident))

    def _make_resident(self, batch: list[Request], pinned: list[str]) -> list[Request]:
        """Load the batch's adapters (evicting others, never `pinned` ones); a request whose adapter cannot be
        loaded fails alone."""
        names = list(dict.fromkeys(name for r in batch for name, _ in r.adapters))
        for name in names:
            if name in self.cache.resident:
                continue
            try:
                start = time.perf_counter()
                self.cache.ensure([name], pinned=[*pinned, *names])
                self.metrics.inc("lorakit_adapter_loads_total", {"adapter": name})
                self.metrics.observe("lorakit_adapter_load_seconds", {}, time.perf_counter() - start)
            except Exception as exc:  # a bad or unreadable adapter fails only the requests that asked for it
                status = 404 if isinstance(exc, UnknownAdapter) else 400 if isinstance(exc, LorakitError) else 500
                if status == 500:
                    logger.error("adapter %r could not be loaded: %s: %s", name, type(exc).__name__, exc, exc_info=exc)
                for request in batch:
                    if any(n == name for n, _ in request.adapters):
                        request.fail(status, str(exc) if status < 500 else f"{type(exc).__name__}: {exc}")
                        request.cancel.set()
        ok = [request for request in batch if not request.cancel.is_set()]
        self.cache.ensure([n for r in ok for n, _ in r.adapters])  # all resident now: only marks them used
        return ok

    def _row(self, request: Request) -> Row:
        def finish(reason: str, tokens: int) -> None:
            seconds = time.perf_counter() - request.created
            labels = {"adapter": request.label}
            self.metrics.inc("lorakit_prompt_tokens_total", labels, len(request.prompt_ids))
            self.metrics.inc("lorakit_completion_tokens_total", labels, tokens)
            self.metrics.observe("lorakit_generation_seconds", labels, seconds)
            request.finish(reason, tokens)

        def fail(exc: Exception) -> None:  # this row alone failed; the batch goes on without it
            logger.error("request %s failed alone: %s: %s", request.request_id, type(exc).__name__, exc,
                         exc_info=exc)
            request.fail(500, _failure_message(request, exc))

        return Row(request.prompt_ids, request.params, request.emit, finish, request.cancel.is_set, fail)


def _failure_message(request: Request, exc: Exception) -> str:
    return f"generation failed (request {request.request_id}): {type(exc).__name__}: {exc}"


def _fail_batch(requests: list[Request], exc: Exception) -> None:
    logger.error("batch of %d request(s) failed (%s): %s: %s", len(requests),
                 ", ".join(r.request_id for r in requests), type(exc).__name__, exc, exc_info=exc)
    for request in requests:
        request.fail(500, _failure_message(request, exc))
