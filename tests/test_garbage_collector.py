"""The collector's policy for a node (services/core/system.py SurvivorFreezer): what survives a collection
is frozen out of the collector's sight, and cyclic garbage among frozen objects is still collected, by a
full collection once CPython's own conditions for one hold."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

from services.core.system import SurvivorFreezer


class Linked:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def seen_by_collector(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_survivors_are_frozen_and_their_cycles_freed_by_the_full_collection_that_growth_brings():
    thresholds = gc.get_threshold()
    scheduled: list[Callable[[], None]] = []
    gc.collect()
    gc.freeze()
    freezer = SurvivorFreezer(scheduled.append)
    freezer.young_per_full = 2
    freezer.install()
    try:
        cycle = Linked()
        freed = weakref.ref(cycle)
        gc.collect(0)
        assert not seen_by_collector(cycle)  # a young collection's survivor is frozen at once
        del cycle
        gc.collect(0)
        gc.collect(1)
        assert freed() is not None  # frozen garbage waits for a full collection...
        assert scheduled == []  # ...which waits for the kept objects to grow by a quarter

        kept = [[n] for n in range(gc.get_freeze_count() // 3)]
        gc.collect(0)
        assert scheduled == [freezer.collect_all]  # asked for once, run on the event loop
        assert freed() is not None

        scheduled.pop()()
        assert freed() is None and freezer.full_collections == 1
        assert not seen_by_collector(kept[-1])  # what survived is frozen again
        gc.collect(0)
        assert scheduled == []  # the kept objects are the new base: no growth since
    finally:
        freezer.uninstall()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_no_full_collection_before_as_many_young_ones_as_cpython_puts_between_two():
    thresholds = gc.get_threshold()
    scheduled: list[Callable[[], None]] = []
    gc.set_threshold(700, 3, 4)
    gc.collect()
    gc.freeze()
    freezer = SurvivorFreezer(scheduled.append)
    freezer.install()
    try:
        assert freezer.young_per_full == 12
        gc.disable()  # only the collections below count
        kept = [[n] for n in range(gc.get_freeze_count())]  # far past a quarter's growth
        for _ in range(11):
            gc.collect(0)
        assert scheduled == []
        gc.collect(0)
        assert scheduled == [freezer.collect_all] and kept
    finally:
        gc.enable()
        freezer.uninstall()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
