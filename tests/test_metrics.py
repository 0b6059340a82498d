"""The per-frame metrics kept in plain numbers scrape exactly as prometheus_client's own would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from services.core.metrics import Tally, TallyHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def exposition(registry: CollectorRegistry) -> str:
    # Creation times differ between the two registries by construction.
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate_latest(registry).decode())


def test_tallies_scrape_like_prometheus_counters_and_histograms():
    theirs, ours = CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)
    counter = Counter("chat_frames_sent", "Frames written to sockets, by type", ["type"], registry=theirs)
    histogram = Histogram("chat_latency_seconds", "Latency", buckets=BUCKETS, registry=theirs)
    tally = Tally("chat_frames_sent", "Frames written to sockets, by type", "type", ours)
    tally_histogram = TallyHistogram("chat_latency_seconds", "Latency", BUCKETS, ours)
    assert exposition(ours) == exposition(theirs)

    for kind, amount in (("typing", 1), ("message", 3), ("typing", 2)):
        counter.labels(type=kind).inc(amount)
        tally.labels(type=kind).inc(amount)
    tally.child("other").inc()
    counter.labels("other").inc()
    for value in (0.0, 0.0005, 0.0007, 0.001, 0.3, 2.5, 7.0):  # on and between the bounds, and past them
        histogram.observe(value)
        tally_histogram.observe(value)
    assert exposition(ours) == exposition(theirs)
    assert 'chat_frames_sent_total{type="typing"} 3.0' in exposition(ours)


def test_a_tally_child_is_bound_once_per_label_value():
    tally = Tally("chat_bus_events_received", "Bus events", "kind", CollectorRegistry())
    assert tally.labels(kind="conversation") is tally.child("conversation") is tally.labels("conversation")
    with pytest.raises(ValueError):
        tally.labels(type="conversation")
