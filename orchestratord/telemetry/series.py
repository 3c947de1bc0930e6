"""Metric series as plain numbers, exported by one collector at scrape time.

prometheus-client's own metric classes take a lock and run two checks on every increment,
and a request changes some thirty series: a share of the daemon's CPU per request for a
guarantee it does not need — every series is changed and read on the event loop's one
thread (hooks run there; a scrape is a request handler). Here a series is a slot object
whose change is one addition, and `SeriesCollector` turns the families into
prometheus-client's metric families when scraped, so the exposition (names, `_total` and
`_bucket` suffixes, `le` labels, order) is what prometheus-client writes for its own.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Literal

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Kind = Literal["counter", "gauge", "histogram"]


class Value:
    """A counter's or a gauge's series: its value, or a function read at scrape."""

    __slots__ = ("function", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.function: Callable[[], float] | None = None

    def inc(self, by: float = 1.0) -> None:
        self.value += by

    def dec(self, by: float = 1.0) -> None:
        self.value -= by

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self.function = function

    def read(self) -> float:
        return float(self.function()) if self.function is not None else self.value


class Distribution:
    """A histogram's series: a count per bucket (the last one +Inf) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # bucket `le` its bound
        self.sum += value


class Family:
    """One metric family: its series by label values."""

    def __init__(
        self, kind: Kind, name: str, help_text: str, labels: tuple[str, ...],
        bounds: tuple[float, ...] = (),
    ) -> None:  # fmt: skip
        self.kind = kind
        self.name = name
        self.help = help_text
        self.labels = labels
        self.bounds = bounds
        self.series: dict[tuple[str, ...], Value | Distribution] = {}
        if not labels:  # an unlabelled family has its one series from the start, at 0
            self._new(())

    def value(self, values: tuple[str, ...]) -> Value:
        """The counter's or gauge's series with these label values (made at first use)."""
        found = self.series.get(values) or self._new(values)
        assert isinstance(found, Value), f"{self.name} is a {self.kind}"
        return found

    def distribution(self, values: tuple[str, ...]) -> Distribution:
        """The histogram's series with these label values (made at first use)."""
        found = self.series.get(values) or self._new(values)
        assert isinstance(found, Distribution), f"{self.name} is a {self.kind}"
        return found

    def _new(self, values: tuple[str, ...]) -> Value | Distribution:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: labels {self.labels}, got {values}")
        made = Distribution(self.bounds) if self.kind == "histogram" else Value()
        self.series[values] = made
        return made

    def metric(self) -> Metric:
        """The family as prometheus-client exposes it."""
        labels = list(self.labels)
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(self.name, self.help, labels=labels)
            les = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]
            for values, series in self.series.items():
                assert isinstance(series, Distribution)
                cumulative, total = [], 0
                for le, count in zip(les, series.counts, strict=True):
                    total += count
                    cumulative.append((le, float(total)))
                histogram.add_metric(list(values), cumulative, series.sum)
            return histogram
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = kind(self.name, self.help, labels=labels)
        for values, series in self.series.items():
            assert isinstance(series, Value)
            family.add_metric(list(values), series.read())
        return family


class SeriesCollector(Collector):
    """Every family, in the order given, at each scrape."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.metric()
