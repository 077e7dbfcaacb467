"""sppdet.parallel.prefetch: the same items in the same order, errors where they happened, and a
producer that stops when the consumer does."""

from __future__ import annotations

import threading
import time

import pytest

from sppdet.parallel import prefetch


def test_items_in_order_computed_ahead():
    made = []

    def produce():
        for i in range(20):
            made.append(i)
            yield i

    seen = []
    for item in prefetch(produce(), ahead=3):
        if item == 0:
            time.sleep(0.2)  # the producer fills the slots meanwhile
            assert len(made) >= 4
        seen.append(item)
    assert seen == list(range(20))


def test_an_error_is_raised_at_its_item():
    def produce():
        yield 1
        yield 2
        raise ValueError("bad image 3")

    seen = []
    with pytest.raises(ValueError, match="bad image 3"):
        for item in prefetch(produce()):
            seen.append(item)
    assert seen == [1, 2]


def test_leaving_early_stops_the_producer():
    made = []

    def produce():
        for i in range(10_000):
            made.append(i)
            yield i

    for item in prefetch(produce(), ahead=2):
        if item == 5:
            break
    time.sleep(0.3)
    assert len(made) < 20 and not any(t.name == "sppdet-prefetch" for t in threading.enumerate())
