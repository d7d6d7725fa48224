"""A small, thread-safe Prometheus text-format registry: counters, gauges, histograms (Python 3.6).

Enough for ``jetcap serve-engine``'s ``/metrics`` without a client library::

    registry = Registry()
    requests = registry.counter("jetcap_requests_total", "HTTP requests.", ["endpoint", "status"])
    requests.inc(endpoint="/caption", status="200")
    print(registry.render())

Gauges may be given a callable (read when rendered), e.g. the process's resident memory.
"""
import math
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# seconds: from a sub-millisecond classifier call to a slow beam search on a Nano
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(names, values, extra=None):
    pairs = list(zip(names, values)) + list(extra or [])
    if not pairs:
        return ""
    return "{" + ",".join('{}="{}"'.format(name, _escape(value)) for name, value in pairs) + "}"


def format_value(value):
    """A sample value as Prometheus writes it (``+Inf``, ``NaN``, integers without ``.0``)."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Metric(object):
    kind = "untyped"

    def __init__(self, name, documentation, labelnames=()):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels):
        if set(labels) != set(self.labelnames):
            raise ValueError("{} takes labels {}, got {}".format(self.name, list(self.labelnames), sorted(labels)))
        return tuple(str(labels[name]) for name in self.labelnames)

    def header(self):
        return ["# HELP {} {}".format(self.name, self.documentation.replace("\n", " ")),
                "# TYPE {} {}".format(self.name, self.kind)]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name, documentation, labelnames=()):
        super(Counter, self).__init__(name, documentation, labelnames)
        self._values = {}

    def inc(self, amount=1, **labels):
        """Add ``amount`` (>= 0) to the series of ``labels``."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels):
        """The current count of ``labels`` (0 when never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0)

    def total(self):
        """The sum over every label set."""
        with self._lock:
            return sum(self._values.values())

    def lines(self):
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0)]
        return [self.name + _format_labels(self.labelnames, key) + " " + format_value(v) for key, v in items]


class Gauge(_Metric):
    """A value that goes up and down; either set explicitly or read from ``function`` when rendered.

    Args:
        function: optional callable returning the value (or None: the sample is left out).
    """

    kind = "gauge"

    def __init__(self, name, documentation, labelnames=(), function=None):
        super(Gauge, self).__init__(name, documentation, labelnames)
        self._values = {}
        self.function = function

    def set(self, value, **labels):
        """Set the series of ``labels`` to ``value``."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def inc(self, amount=1, **labels):
        """Add ``amount`` (may be negative)."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def dec(self, amount=1, **labels):
        """Subtract ``amount``."""
        self.inc(-amount, **labels)

    def value(self, **labels):
        """The current value (the function's result for callable gauges; None when unknown)."""
        if self.function is not None:
            return self.function()
        with self._lock:
            return self._values.get(self._key(labels))

    def lines(self):
        if self.function is not None:
            value = self.function()
            return [] if value is None else [self.name + " " + format_value(value)]
        with self._lock:
            items = sorted(self._values.items())
        return [self.name + _format_labels(self.labelnames, key) + " " + format_value(v)
                for key, v in items if v is not None]


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with their sum and count, per label set."""

    kind = "histogram"

    def __init__(self, name, documentation, labelnames=(), buckets=DEFAULT_BUCKETS):
        super(Histogram, self).__init__(name, documentation, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series = {}

    def observe(self, value, **labels):
        """Record one observation ``value`` for ``labels``."""
        key = self._key(labels)
        value = float(value)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [[0] * len(self.buckets), 0.0, 0]
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[0][i] += 1
                    break
            series[1] += value
            series[2] += 1

    def count(self, **labels):
        """Observations recorded for ``labels``."""
        with self._lock:
            series = self._series.get(self._key(labels))
            return series[2] if series else 0

    def lines(self):
        with self._lock:
            items = sorted((key, ([list(s[0]), s[1], s[2]])) for key, s in self._series.items())
        out = []
        for key, (counts, total, count) in items:
            cumulative = 0
            for bound, n in zip(self.buckets, counts):
                cumulative += n
                out.append(self.name + "_bucket" + _format_labels(self.labelnames, key, [("le", format_value(bound))])
                           + " " + format_value(cumulative))
            out.append(self.name + "_bucket" + _format_labels(self.labelnames, key, [("le", "+Inf")])
                       + " " + format_value(count))
            out.append(self.name + "_sum" + _format_labels(self.labelnames, key) + " " + format_value(total))
            out.append(self.name + "_count" + _format_labels(self.labelnames, key) + " " + format_value(count))
        return out


class Registry(object):
    """An ordered set of metrics rendered together in the Prometheus text format (version 0.0.4)."""

    def __init__(self):
        self._metrics = []
        self._names = set()

    def _add(self, metric):
        if metric.name in self._names:
            raise ValueError("metric {} registered twice".format(metric.name))
        self._names.add(metric.name)
        self._metrics.append(metric)
        return metric

    def counter(self, name, documentation, labelnames=()):
        """Register and return a :class:`Counter`."""
        return self._add(Counter(name, documentation, labelnames))

    def gauge(self, name, documentation, labelnames=(), function=None):
        """Register and return a :class:`Gauge` (``function``: read at render time)."""
        return self._add(Gauge(name, documentation, labelnames, function))

    def histogram(self, name, documentation, labelnames=(), buckets=DEFAULT_BUCKETS):
        """Register and return a :class:`Histogram`."""
        return self._add(Histogram(name, documentation, labelnames, buckets))

    def render(self):
        """The exposition text of every metric, ending with a newline."""
        lines = []
        for metric in self._metrics:
            lines.extend(metric.header())
            lines.extend(metric.lines())
        return "\n".join(lines) + "\n"


def parse_text(text):
    """``{(name, ((label, value), ...)): float}`` of an exposition text (for tests and the soak script)."""
    samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        labels = ()
        if "{" in series:
            name, _, rest = series.partition("{")
            pairs = []
            for item in _split_labels(rest.rstrip("}")):
                label, _, quoted = item.partition("=")
                pairs.append((label, quoted[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")))
            labels = tuple(sorted(pairs))
        else:
            name = series
        samples[(name, labels)] = float(value)
    return samples


def _split_labels(text):
    items, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        items.append("".join(current))
    return items
