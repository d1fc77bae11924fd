"""The conversion report: what a conversion matched, renamed, transposed, reshaped, cast, dropped
and created. Never silent: every importer, aligner and exporter writes here, and the CLI prints it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

# The actions, in the order the text report lists them.
ACTIONS = (
    "matched",      # taken over unchanged
    "renamed",      # native name -> canonical name (or canonical -> destination)
    "transposed",   # layout changed (detail: e.g. HWIO->OIHW)
    "reshaped",     # shape changed without reordering (e.g. [out,in] -> [out,in,1,1])
    "permuted",     # elements reordered within a layout (a Dense's input rows after a Flatten: HWC->CHW)
    "cast",         # dtype changed (detail: float16->float32)
    "dropped",      # in the source, not written (detail: why)
    "created",      # written, not in the source (detail: why)
    "tied",         # stored once, shared by several names
    "stored",       # non-tensor content written (detail: where in the output)
    "missing",      # expected by the destination/template, absent from the source
    "unexpected",   # in the source, unknown to the destination/template
    "mismatch",     # same name, incompatible shape
    "ambiguous",    # more than one candidate, not settled
    "warning",      # anything else a user should read
)
PROBLEMS = ("missing", "unexpected", "mismatch", "ambiguous")


STAGES = ("read", "align", "write")
SCHEMA = "hubfmt-report/1"


@dataclass(slots=True)                   # slots: a "matched" event per tensor
class Event:
    """One thing a stage did to one tensor (or non-tensor entry). `name` is the name the entry
    had when the stage met it; for "renamed", `to` is the name it left with (old -> new, always)."""
    action: str
    name: str
    detail: str = ""
    stage: str = ""   # "read", "align", "write"
    to: str = ""
    confidence: float | None = None   # how sure the alignment was of this pairing (0..1)

    def to_json(self) -> dict:
        d: dict[str, object] = {"action": self.action, "name": self.name}
        if self.to:
            d["to"] = self.to
        if self.detail:
            d["detail"] = self.detail
        if self.stage:
            d["stage"] = self.stage
        if self.confidence is not None:
            d["confidence"] = round(self.confidence, 3)
        return d


@dataclass
class Stage:
    """Tensor counts at one stage's boundaries (None: not known, e.g. a native file's raw count)."""
    name: str
    tensors_in: int | None
    tensors_out: int
    label: str = ""    # what the stage worked on: the source file, the template, the destination
    # The names of the tensors the stage took in, when known: tells a dropped tensor from a
    # dropped non-tensor entry. Not part of the JSON.
    names_in: tuple[str, ...] | None = field(default=None, repr=False, compare=False)


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
    stages: list[Stage] = field(default_factory=list)
    mapping: Sequence[dict] = field(default_factory=list)   # a list, or end_to_end's MappingRows
    files: list[str] = field(default_factory=list)   # what the writer published, when it says

    def add(self, action: str, name: str, detail: str = "", *, to: str = "", confidence: float | None = None) -> None:
        """Record an event. For "renamed", `name` is the old name and `to` the new one."""
        if action not in ACTIONS:
            raise ValueError(f"unknown report action {action!r}")
        if action == "renamed" and not to:
            raise ValueError("a renamed event needs to= (the new name)")
        self.events.append(Event(action, name, detail, self.stage, to, confidence))

    def matched(self, name: str) -> None:
        """add("matched", name), without add's checks: writers record one for each tensor they
        store as it is (a million, for some checkpoints)."""
        self.events.append(Event("matched", name, "", self.stage))

    def renamed(self, old: str, new: str, why: str = "", *, confidence: float | None = None) -> None:
        self.add("renamed", old, why, to=new, confidence=confidence)

    def extend(self, other: "Report", *, stage: str | None = None) -> None:
        """Append `other`'s events; `stage` (when given) is the stage they all belong to."""
        if stage is None:
            self.events.extend(other.events)
        else:
            # Event(...) directly: dataclasses.replace re-inspects the fields for every event. An
            # event of that stage already is shared, not copied (a writer's million "matched").
            self.events.extend(e if e.stage == stage else Event(e.action, e.name, e.detail, stage, e.to, e.confidence)
                               for e in other.events)

    def in_stage(self, stage: str) -> list[Event]:
        return [e for e in self.events if e.stage == stage]

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
        """The report as data; the schema is spec/report.md (`schema` names its version)."""
        from hubfmt.version import __version__

        return {
            "schema": SCHEMA,
            "hubfmt_version": __version__,
            "source": self.source,
            "destination": self.destination,
            "tensors_in": self.tensors_in,
            "tensors_out": self.tensors_out,
            "bytes_out": self.bytes_out,
            "files": self.files,
            "stages": [self._stage_json(s) for s in self.stages],
            "counts": self.counts(),
            "mapping": list(self.mapping),
            "events": [e.to_json() for e in self.events],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def _stage_json(self, s: Stage) -> dict:
        out: dict = {"stage": s.name, "label": s.label, "tensors_in": s.tensors_in, "tensors_out": s.tensors_out}
        out.update(self.stage_counts(s))
        return out

    def stage_counts(self, s: Stage) -> dict[str, int]:
        """How a stage's tensors split: kept + renamed + dropped = tensors_in, kept + renamed +
        created = tensors_out (each tensor counted once, whatever else happened to it; a tensor split
        into parts or parts concatenated into one change the count out); the layout and dtype
        changes (split, concatenated, transposed, reshaped, cast) and non-tensor entries counted beside."""
        evs = self.in_stage(s.name)
        distinct = {a: {e.name for e in evs if e.action == a} for a in ACTIONS}
        names_in = frozenset(s.names_in) if s.names_in is not None else None     # kept as a tuple: 8 B a name
        if names_in is not None:
            renamed = distinct["renamed"] & names_in
            dropped = distinct["dropped"] & names_in
            other_dropped = distinct["dropped"] - names_in
        else:
            renamed, dropped, other_dropped = distinct["renamed"], set(), distinct["dropped"]
        created = {e.name for e in evs if e.action == "created"}
        counts = {"renamed": len(renamed), "dropped": len(dropped), "created": len(created)}
        base = s.tensors_in if s.tensors_in is not None else s.tensors_out - len(created)
        counts["kept"] = base - len(renamed) - len(dropped)
        for a in ("transposed", "permuted", "reshaped", "cast", "tied"):
            counts[a] = len(distinct[a])
        # Fused tensors (q,k,v): one split into several, several concatenated into one.
        for key, word in (("split", "split along"), ("concatenated", "merged along")):
            counts[key] = len({e.name for e in evs if e.action == "renamed" and e.detail.startswith(word)})
        counts["non_tensor_dropped"] = len(other_dropped)
        counts["non_tensor_stored"] = len(distinct["stored"])
        return counts

    def to_text(self, *, verbose: bool = False, limit: int = 20) -> str:
        """For a person: one line of totals, one line per stage whose counts add up, then what
        happened to which tensors ('matched' only with verbose; at most `limit` names per list)."""
        head = f"{self.source or '?'} -> {self.destination or '?'}: {self.tensors_out} tensors written"
        if self.bytes_out:
            head += f" ({human_bytes(self.bytes_out)})"
        if self.stages and self.stages[0].tensors_out != self.tensors_out:
            head += f", from {self.stages[0].tensors_out} read"
        lines = [head]
        if len(self.files) > 1:
            files = [f.rsplit("/", 1)[-1] for f in self.files]
            short = files if len(files) <= 4 else files[:2] + ["..."] + files[-2:]
            lines.append(f"  {len(files)} files: {', '.join(short)}")
        for s in self.stages:
            lines.append("  " + self._stage_line(s))
        if not self.stages:
            counts = self.counts()
            lines.append("  " + ", ".join(f"{a} {n}" for a, n in counts.items()) if counts else "  (no events)")
        renames = [m for m in self.mapping if m["destination"] is not None and m["source"] != m["destination"]]
        if renames and not verbose:
            # What the user asked for: each tensor's name in the source -> its name in the output
            # (the per-stage steps are in --verbose and --report).
            shown = renames[:limit]
            width = min(60, max(len(m["source"]) for m in shown))
            lines.append(f"renamed ({len(renames)}), source name -> destination name:")
            lines.extend(f"  {m['source']:<{width}}  -> {m['destination']}" for m in shown)
            if len(shown) < len(renames):
                lines.append(f"  ... and {len(renames) - len(shown)} more (--verbose or --report FILE.json for all)")
        stages = [s.name for s in self.stages] or sorted({e.stage for e in self.events})
        for stage in stages + ([""] if any(not e.stage for e in self.events) else []):
            evs_stage = [e for e in self.events if e.stage == stage]
            for action in ACTIONS:
                evs = [e for e in evs_stage if e.action == action]
                if not evs or (action == "matched" and not verbose) or (action == "renamed" and renames and not verbose):
                    continue
                where = f" at {stage}" if stage else ""
                lines.append(f"{action}{where} ({len(evs)}){', old -> new' if action == 'renamed' else ''}:")
                listed = evs if verbose else evs[:limit]
                width = min(60, max(len(e.name) for e in listed))
                for e in listed:
                    if action == "renamed":
                        lines.append(f"  {e.name:<{width}}  -> {e.to}" + (f"  ({e.detail})" if e.detail else ""))
                    else:
                        lines.append(f"  {e.name:<{width}}  {e.detail}".rstrip())
                if len(listed) < len(evs):
                    lines.append(f"  ... and {len(evs) - len(listed)} more (--verbose or --report FILE.json for all)")
        return "\n".join(lines)

    def _stage_line(self, s: Stage) -> str:
        c = self.stage_counts(s)
        where = f" {s.label}" if s.label else ""
        if s.tensors_in is None:
            text = f"{s.name:<6}{where}: {s.tensors_out} tensors"
        else:
            text = f"{s.name:<6}{where}: {s.tensors_in} -> {s.tensors_out} tensors"
        parts = [f"{c[k]} {k}" for k in ("kept", "renamed", "dropped", "created") if c[k]]
        text += " = " + " + ".join(parts) if parts else ""
        extra = [f"{c[k]} {k}" for k in ("split", "concatenated", "transposed", "permuted", "reshaped", "cast", "tied")
                 if c[k]]
        for key, verb in (("non_tensor_stored", "stored"), ("non_tensor_dropped", "dropped")):
            n = c[key]
            if n:
                extra.append(f"{n} non-tensor {'entry' if n == 1 else 'entries'} {verb}")
        warnings = sum(1 for e in self.in_stage(s.name) if e.action == "warning")
        if warnings:
            extra.append(f"{warnings} warning{'s' if warnings > 1 else ''}")
        return text + (f"; {', '.join(extra)}" if extra else "")


def stage(name: str, tensors_in: int | None, tensors_out: int, label: str = "", names_in=None) -> Stage:
    """A Stage; `names_in` (any iterable of the input tensors' names) is kept as a tuple."""
    return Stage(name, tensors_in, tensors_out, label, tuple(names_in) if names_in is not None else None)


def human_bytes(n: float) -> str:
    """A byte count for a person: `512 B`, `1.1 KiB`, `7.2 GiB` (binary units)."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


class MappingRows(Sequence):
    """`Report.mapping` as end_to_end makes it: the rows are computed when first read (a report
    printed or saved), not when the conversion ends: a million rows are ~250 MB, and most
    conversions of that size are run with -q (#13). Read once, they are kept (and may be updated
    in place, as add_output_checksums does)."""

    __slots__ = ("_args", "_rows")

    def __init__(self, report: Report, written: list[str], source_names: dict[str, str]):
        self._args: tuple | None = (report, written, source_names)
        self._rows: list[dict] | None = None

    def rows(self) -> list[dict]:
        if self._rows is None:
            assert self._args is not None
            self._rows, self._args = _end_to_end_rows(*self._args), None
        return self._rows

    def __len__(self) -> int:
        return len(self.rows())

    def __getitem__(self, i):
        return self.rows()[i]

    def __iter__(self):
        return iter(self.rows())

    def __eq__(self, other) -> bool:
        return self.rows() == (other.rows() if isinstance(other, MappingRows) else other)

    __hash__ = None     # type: ignore[assignment]   # mutable, like the list it stands for

    def __repr__(self) -> str:
        return repr(self.rows())


def end_to_end(report: Report, written: list[str], source_names: dict[str, str]) -> MappingRows:
    """The mapping a user asked for, one row per tensor handed to the writer (`written`, canonical
    names): its name in the source file, its canonical name, its name in the destination (None,
    with "dropped": why, when the writer could not hold it), the layout/dtype changes made to it on
    the way (stage: detail) and the alignment's confidence. `source_names` maps each tensor's
    canonical name as read (before any alignment) to its name in the source file. The rows are
    made when first read (MappingRows)."""
    return MappingRows(report, written, source_names)


def _end_to_end_rows(report: Report, written: list[str], source_names: dict[str, str]) -> list[dict]:
    by_stage: dict[str, list[Event]] = {s: report.in_stage(s) for s in STAGES}
    read_from = {e.to: e.name for e in by_stage["read"] if e.action == "renamed"}
    aligned_from = {e.to: e.name for e in by_stage["align"] if e.action == "renamed"}
    written_as = {e.name: e.to for e in by_stage["write"] if e.action == "renamed"}
    dropped_at_write = {e.name: e.detail for e in by_stage["write"] if e.action == "dropped"}
    confidence = {(e.to or e.name): e.confidence for e in by_stage["align"]
                  if e.action in ("renamed", "matched") and e.confidence is not None}
    changes: dict[tuple[str, str], list[str]] = {}
    for stage, evs in by_stage.items():
        for e in evs:
            if e.action in ("transposed", "permuted", "reshaped", "cast"):
                changes.setdefault((stage, e.name), []).append(f"{e.action} {e.detail}".strip())
    rows = []
    for canonical in written:
        before_align = aligned_from.get(canonical, canonical)
        # The name in the source file: the reader's record (original_name) when it kept one,
        # else what its rename events say.
        original = source_names.get(before_align) or ""
        if not original or original == before_align:
            original = read_from.get(before_align, before_align)
        destination: str | None = written_as.get(canonical, canonical)
        if canonical in dropped_at_write:
            destination = None
        if changes:
            names = {"read": {original, before_align}, "align": {before_align, canonical},
                     "write": {canonical, destination or canonical}}
            transforms = [f"{stage}: {c}" for stage in STAGES for n in sorted(names[stage])
                          for c in changes.get((stage, n), [])]
        else:
            transforms = []
        row = {"source": original, "canonical": canonical, "destination": destination,
               "transforms": transforms, "confidence": confidence.get(canonical)}
        if destination is None:
            row["dropped"] = dropped_at_write[canonical]
        rows.append(row)
    return rows
