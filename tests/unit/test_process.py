"""Process plumbing: the garbage collector's settings for long-running workers."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ingest.process import GC_GEN0_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_settle_heap_freezes_what_exists_and_collects_young_objects_less_often(
    restored_gc: None,
) -> None:
    gc.unfreeze()
    _, gen1, gen2 = gc.get_threshold()
    settle_heap()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, gen1, gen2)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()
