"""The conversion report: what a conversion matched, renamed, transposed, reshaped, cast, dropped
and created. Never silent: every importer, aligner and exporter writes here, and the CLI prints it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

# The actions, in the order the text report lists them.
ACTIONS = (
    "matched",      # taken over unchanged
    "renamed",      # native name -> canonical name (or canonical -> destination)
    "transposed",   # layout changed (detail: e.g. HWIO->OIHW)
    "reshaped",     # shape changed without reordering (e.g. [out,in] -> [out,in,1,1])
    "cast",         # dtype changed (detail: float16->float32)
    "dropped",      # in the source, not written (detail: why)
    "created",      # written, not in the source (detail: why)
    "tied",         # stored once, shared by several names
    "missing",      # expected by the destination/template, absent from the source
    "unexpected",   # in the source, unknown to the destination/template
    "mismatch",     # same name, incompatible shape
    "ambiguous",    # more than one candidate, not settled
    "warning",      # anything else a user should read
)
PROBLEMS = ("missing", "unexpected", "mismatch", "ambiguous")


@dataclass
class Event:
    action: str
    name: str
    detail: str = ""
    stage: str = ""   # "read", "align", "write"

    def to_json(self) -> dict:
        d = {"action": self.action, "name": self.name}
        if self.detail:
            d["detail"] = self.detail
        if self.stage:
            d["stage"] = self.stage
        return d


@dataclass
class Report:
    """An append-only log of events plus a few totals."""

    events: list[Event] = field(default_factory=list)
    source: str = ""
    destination: str = ""
    tensors_in: int = 0
    tensors_out: int = 0
    bytes_out: int = 0
    stage: str = ""

    def add(self, action: str, name: str, detail: str = "") -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown report action {action!r}")
        self.events.append(Event(action, name, detail, self.stage))

    def extend(self, other: "Report") -> None:
        self.events.extend(other.events)

    def of(self, action: str) -> list[Event]:
        return [e for e in self.events if e.action == action]

    def names(self, action: str) -> list[str]:
        return [e.name for e in self.events if e.action == action]

    def counts(self) -> dict[str, int]:
        out = {a: 0 for a in ACTIONS}
        for e in self.events:
            out[e.action] += 1
        return {a: n for a, n in out.items() if n}

    @property
    def problems(self) -> list[Event]:
        return [e for e in self.events if e.action in PROBLEMS]

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "destination": self.destination,
            "tensors_in": self.tensors_in,
            "tensors_out": self.tensors_out,
            "bytes_out": self.bytes_out,
            "counts": self.counts(),
            "events": [e.to_json() for e in self.events],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def to_text(self, *, verbose: bool = False, limit: int = 20) -> str:
        """Human summary: a totals line, then each non-trivial action with its names.

        'matched' events are listed only when verbose; everything else is always listed, up to
        `limit` names per action unless verbose.
        """
        lines = []
        head = f"{self.source or '?'} -> {self.destination or '?'}: {self.tensors_out}/{self.tensors_in} tensors"
        if self.bytes_out:
            head += f", {_human(self.bytes_out)}"
        lines.append(head)
        counts = self.counts()
        lines.append("  " + ", ".join(f"{a} {n}" for a, n in counts.items()) if counts else "  (no events)")
        for action in ACTIONS:
            evs = self.of(action)
            if not evs or (action == "matched" and not verbose):
                continue
            lines.append(f"{action} ({len(evs)}):")
            shown = evs if verbose else evs[:limit]
            width = min(60, max(len(e.name) for e in shown))
            for e in shown:
                lines.append(f"  {e.name:<{width}}  {e.detail}".rstrip())
            if len(shown) < len(evs):
                lines.append(f"  ... and {len(evs) - len(shown)} more (--verbose or --report FILE.json for all)")
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)
