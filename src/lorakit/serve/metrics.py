"""Server metrics in the Prometheus text exposition format (version 0.0.4), with no client library needed.

Counters, gauges and histograms keyed by label sets; thread-safe (the model thread and the HTTP side both write).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left

# name -> (type, help). Label names are given at each call; every metric is declared here.
FAMILIES: dict[str, tuple[str, str]] = {
    "lorakit_requests_total": ("counter", "HTTP requests by endpoint, adapter and status code"),
    "lorakit_request_seconds": ("histogram", "HTTP request latency (to the last byte, streams included) by adapter"),
    "lorakit_generation_seconds": ("histogram", "time from a request entering the queue to its last token, by adapter"),
    "lorakit_prompt_tokens_total": ("counter", "prompt tokens processed, by adapter"),
    "lorakit_completion_tokens_total": ("counter", "tokens generated, by adapter"),
    "lorakit_batch_size": ("histogram", "rows per forward pass (a prefill or a decoding step)"),
    "lorakit_queue_depth": ("gauge", "requests waiting for a batch"),
    "lorakit_adapters_resident": ("gauge", "adapters resident in the cache"),
    "lorakit_adapter_loads_total": ("counter", "adapters read from disk into a slot, by adapter"),
    "lorakit_adapter_unloads_total": ("counter", "adapters removed from their slot, by adapter"),
    "lorakit_adapter_load_seconds": ("histogram", "time to read an adapter and copy it into a slot"),
}
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple, float]] = {}  # counters and gauges
        self._histograms: dict[str, dict[tuple, list]] = {}  # key -> [bucket counts..., sum, count]

    def inc(self, name: str, labels: dict[str, str], value: float = 1.0) -> None:
        self._check(name, "counter")
        with self._lock:
            series = self._values.setdefault(name, {})
            key = _key(labels)
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, labels: dict[str, str], value: float) -> None:
        self._check(name, "gauge")
        with self._lock:
            self._values.setdefault(name, {})[_key(labels)] = float(value)

    def observe(self, name: str, labels: dict[str, str], value: float) -> None:
        self._check(name, "histogram")
        buckets = _buckets(name)
        with self._lock:
            state = self._histograms.setdefault(name, {}).setdefault(_key(labels), [0] * len(buckets) + [0.0, 0])
            index = bisect_left(buckets, value)  # first bucket whose upper bound is >= value
            if index < len(buckets):
                state[index] += 1
            state[-2] += value
            state[-1] += 1

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A counter's or gauge's current value (0 if never set); a histogram's observation count."""
        with self._lock:
            if name in self._histograms:
                return float(self._histograms[name].get(_key(labels or {}), [0])[-1])
            return self._values.get(name, {}).get(_key(labels or {}), 0.0)

    def summary(self, name: str, labels: dict[str, str] | None = None) -> tuple[float, float, list[int]]:
        """A histogram's (sum, count, per-bucket counts) so far."""
        with self._lock:
            state = self._histograms.get(name, {}).get(_key(labels or {}))
            if state is None:
                return 0.0, 0.0, [0] * len(_buckets(name))
            return state[-2], float(state[-1]), list(state[:-2])

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in FAMILIES.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    for key, state in sorted(self._histograms.get(name, {}).items()):
                        lines += _histogram_lines(name, key, state, _buckets(name))
                else:
                    for key, value in sorted(self._values.get(name, {}).items()):
                        lines.append(f"{name}{_labels(key)} {_number(value)}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _check(name: str, kind: str) -> None:
        if FAMILIES.get(name, (None,))[0] != kind:
            raise KeyError(f"metric {name!r} is not a declared {kind}")


def _buckets(name: str) -> tuple[float, ...]:
    return SIZE_BUCKETS if name == "lorakit_batch_size" else SECONDS_BUCKETS


def _histogram_lines(name: str, key: tuple, state: list, buckets: tuple[float, ...]) -> list[str]:
    lines, running = [], 0
    for bound, count in zip(buckets, state, strict=False):
        running += count
        lines.append(f"{name}_bucket{_labels((*key, ('le', _number(bound))))} {running}")
    lines.append(f"{name}_bucket{_labels((*key, ('le', '+Inf')))} {state[-1]}")
    lines.append(f"{name}_sum{_labels(key)} {_number(state[-2])}")
    lines.append(f"{name}_count{_labels(key)} {state[-1]}")
    return lines


def _key(labels: dict[str, str]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _labels(key: tuple) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in key) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))
