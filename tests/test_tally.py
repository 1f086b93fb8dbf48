"""The fast path's batched metrics (router_proxy/tally.py) equal per-request ones."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from router_proxy.tally import BATCH, BeforeScrape, Tally, observe_many

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


def _pair() -> tuple[Histogram, Histogram]:
    registry = CollectorRegistry()
    one = Histogram("one_seconds", "per value", registry=registry, buckets=BUCKETS)
    many = Histogram("many_seconds", "batched", registry=registry, buckets=BUCKETS)
    return one, many


def _samples(h: Histogram) -> list[tuple[str, float]]:
    return sorted(
        (s.name.split("_", 1)[1] + str(s.labels.get("le", "")), s.value)
        for m in h.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    )


@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=10, allow_nan=False),
            st.sampled_from(BUCKETS),  # exactly on a bound: observe() puts it in that bucket
            st.just(float("inf")),
        ),
        max_size=300,
    )
)
@settings(max_examples=60, deadline=None)
def test_observe_many_equals_observe_one_by_one(values: list[float]) -> None:
    one, many = _pair()
    for v in values:
        one.observe(v)
    observe_many(many, values)
    assert _samples(one) == _samples(many)


def test_a_histogram_without_the_private_fields_falls_back_to_observe() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    observe_many(plain, [0.5, 2.0])
    assert plain.seen == [0.5, 2.0]


def test_counts_reach_the_registry_by_batch_or_before_a_scrape() -> None:
    registry = CollectorRegistry()
    hooks = BeforeScrape()
    registry.register(hooks)  # first: flushes before the metrics below are read
    requests = Counter("reqs", "requests", ["pod", "status"], registry=registry)
    latency = Histogram("lat_seconds", "latency", registry=registry)
    tally = Tally(lambda key: requests.labels(*key), latency)
    hooks.hooks.append(tally.flush)
    for _ in range(BATCH - 1):
        tally.add(("a", "200"), 0.01)
    assert requests.labels("a", "200")._value.get() == 0  # still batched
    text = generate_latest(registry).decode()
    assert 'reqs_total{pod="a",status="200"} 511.0' in text
    assert "lat_seconds_count 511.0" in text
    for _ in range(BATCH):
        tally.add(("a", "503"), 0.2)
    assert requests.labels("a", "503")._value.get() == BATCH  # a full batch folds itself in
