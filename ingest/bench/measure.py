"""What every phase shares: its result, its failure, and where the CPU time went."""

from __future__ import annotations

import contextlib
import math
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IDLE_TIMEOUT_S = 30.0  # a phase making no progress for this long has lost something
_TICK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A phase lost rows, stalled or could not run: the bench fails loudly."""


@dataclass(slots=True)
class PhaseResult:
    label: str
    events: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "events": self.events,
            "seconds": round(self.seconds, 4),
            "events_per_s": round(self.rate, 1),
            **self.extra,
        }


def proc_cpu_seconds(stat: str) -> float:
    """utime + stime of a /proc/<pid>/stat line, in seconds."""
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds used so far by this process ("bench") and by its descendants, grouped as
    "postgres", "broker" (Tansu) and "children" (gateway, consumer). Linux /proc; services
    not started by this process (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS) are not seen."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"bench": usage.ru_utime + usage.ru_stime, "postgres": 0.0, "broker": 0.0}
    out["children"] = 0.0
    parent: dict[int, int] = {}
    used: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            comm, rest = text[text.find("(") + 1 : text.rfind(")")], text[text.rfind(")") + 2 :]
            pid = int(entry.name)
            parent[pid] = int(rest.split()[1])
            used[pid] = (comm, proc_cpu_seconds(text))
    me = os.getpid()
    for pid, (comm, seconds) in used.items():
        ancestor, hops = parent.get(pid, 0), 0
        while ancestor not in (me, 0, 1) and hops < 16:
            ancestor, hops = parent.get(ancestor, 0), hops + 1
        if ancestor == me and pid != me:
            kind = "postgres" if comm.startswith("postgres") else "children"
            out["broker" if comm.startswith("tansu") else kind] += seconds
    return out


def cpu_share(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Cores used on average over `seconds`, per kind (1.0 = one core busy)."""
    if seconds <= 0:
        return {}
    return {k: round((after[k] - before.get(k, 0.0)) / seconds, 2) for k in after}


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
