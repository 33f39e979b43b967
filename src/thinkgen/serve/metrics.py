"""Counters of the image server, rendered as Prometheus text or JSON by ``GET /metrics``.

Written by the event loop (HTTP requests) and by the worker thread (batches, job outcomes), so every update
takes one lock. Latency quantiles come from a window of the most recent requests per route.
"""

from __future__ import annotations

import statistics
import threading
from collections import Counter, deque
from typing import Any

# Enough recent latencies for a stable p95, few enough to sort on every scrape.
LATENCY_WINDOW = 2048


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class ServeMetrics:
    """What ``/metrics`` reports: requests, batch sizes, latencies, job outcomes (and the queue depth it is
    given when rendering)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._latency: dict[str, deque[float]] = {}
        self._latency_sum: Counter[str] = Counter()
        self._latency_count: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self._jobs: Counter[str] = Counter()
        self._images = 0
        self._service_s: deque[float] = deque(maxlen=64)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """An HTTP request finished with ``status`` after ``seconds``."""
        with self._lock:
            self._requests[(route, status)] += 1
            self._latency.setdefault(route, deque(maxlen=LATENCY_WINDOW)).append(seconds)
            self._latency_sum[route] += seconds
            self._latency_count[route] += 1

    def observe_batch(self, num_requests: int, num_images: int, seconds: float) -> None:
        """One pipeline call served ``num_requests`` requests with ``num_images`` images in ``seconds``."""
        with self._lock:
            self._batch_sizes[num_requests] += 1
            self._images += num_images
            self._service_s.append(seconds)

    def observe_job(self, outcome: str) -> None:
        """A request left the queue: ``ok``, ``invalid``, ``error``, ``cancelled``, ``timeout`` or ``rejected``."""
        with self._lock:
            self._jobs[outcome] += 1

    def mean_service_s(self) -> float | None:
        """Mean seconds of the recent pipeline calls, None before the first."""
        with self._lock:
            return statistics.fmean(self._service_s) if self._service_s else None

    def as_dict(self, queue_depth: int) -> dict[str, Any]:
        """Everything, as JSON-ready values, with the current ``queue_depth``."""
        with self._lock:
            latency = {
                route: {
                    "count": self._latency_count[route],
                    "sum_s": self._latency_sum[route],
                    "p50_s": _quantile(list(window), 0.5),
                    "p95_s": _quantile(list(window), 0.95),
                }
                for route, window in self._latency.items()
            }
            return {
                "requests": [{"route": r, "status": s, "count": c} for (r, s), c in sorted(self._requests.items())],
                "queue_depth": queue_depth,
                "batch_sizes": {str(k): v for k, v in sorted(self._batch_sizes.items())},
                "images_generated": self._images,
                "jobs": dict(sorted(self._jobs.items())),
                "latency": latency,
            }

    def render_prometheus(self, queue_depth: int) -> str:
        """The Prometheus text exposition format (version 0.0.4), with the current ``queue_depth``."""
        data = self.as_dict(queue_depth)
        lines = ["# HELP thinkgen_requests_total HTTP requests by route and status.",
                 "# TYPE thinkgen_requests_total counter"]
        lines += [f'thinkgen_requests_total{{route="{r["route"]}",status="{r["status"]}"}} {r["count"]}'
                  for r in data["requests"]]
        lines += ["# HELP thinkgen_queue_depth Requests waiting for the model.", "# TYPE thinkgen_queue_depth gauge",
                  f"thinkgen_queue_depth {data['queue_depth']}"]
        lines += ["# HELP thinkgen_batches_total Pipeline calls by the number of requests they served.",
                  "# TYPE thinkgen_batches_total counter"]
        lines += [f'thinkgen_batches_total{{batch_size="{k}"}} {v}' for k, v in data["batch_sizes"].items()]
        lines += ["# HELP thinkgen_images_total Images drawn.", "# TYPE thinkgen_images_total counter",
                  f"thinkgen_images_total {data['images_generated']}"]
        lines += ["# HELP thinkgen_jobs_total Requests that left the queue, by outcome.",
                  "# TYPE thinkgen_jobs_total counter"]
        lines += [f'thinkgen_jobs_total{{outcome="{k}"}} {v}' for k, v in data["jobs"].items()]
        lines += ["# HELP thinkgen_request_seconds HTTP request latency (quantiles over recent requests).",
                  "# TYPE thinkgen_request_seconds summary"]
        for route, s in data["latency"].items():
            lines += [f'thinkgen_request_seconds{{route="{route}",quantile="0.5"}} {s["p50_s"]:.6f}',
                      f'thinkgen_request_seconds{{route="{route}",quantile="0.95"}} {s["p95_s"]:.6f}',
                      f'thinkgen_request_seconds_sum{{route="{route}"}} {s["sum_s"]:.6f}',
                      f'thinkgen_request_seconds_count{{route="{route}"}} {s["count"]}']
        return "\n".join(lines) + "\n"
