"""The Prometheus text format of the server's metrics."""

from __future__ import annotations

import pytest

from lorakit.serve.metrics import Metrics


def test_counters_gauges_and_cumulative_histograms():
    metrics = Metrics()
    metrics.inc("lorakit_requests_total", {"endpoint": "chat", "adapter": 'we"ird\\', "status": "200"})
    metrics.inc("lorakit_requests_total", {"endpoint": "chat", "adapter": 'we"ird\\', "status": "200"}, 2)
    metrics.set("lorakit_queue_depth", {}, 3)
    for value in (0.003, 0.2, 0.2, 100.0):
        metrics.observe("lorakit_request_seconds", {"adapter": "a"}, value)
    text = metrics.render()
    assert '# TYPE lorakit_requests_total counter' in text
    assert 'lorakit_requests_total{adapter="we\\"ird\\\\",endpoint="chat",status="200"} 3' in text
    assert "lorakit_queue_depth 3" in text
    assert 'lorakit_request_seconds_bucket{adapter="a",le="0.005"} 1' in text
    assert 'lorakit_request_seconds_bucket{adapter="a",le="0.25"} 3' in text
    assert 'lorakit_request_seconds_bucket{adapter="a",le="60"} 3' in text
    assert 'lorakit_request_seconds_bucket{adapter="a",le="+Inf"} 4' in text
    assert 'lorakit_request_seconds_count{adapter="a"} 4' in text
    assert 'lorakit_request_seconds_sum{adapter="a"} 100.403' in text
    assert metrics.value("lorakit_request_seconds", {"adapter": "a"}) == 4
    assert text.endswith("\n")


def test_undeclared_metrics_are_refused():
    with pytest.raises(KeyError):
        Metrics().inc("lorakit_queue_depth", {})  # a gauge, not a counter
