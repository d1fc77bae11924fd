"""Template alignment: map a source checkpoint's tensors onto the names a destination expects.

Two implementations of one network name and order their modules differently. Given the
destination's expected parameters (a template: a checkpoint of any format, an in-memory
Checkpoint, or a names+shapes listing), `align` matches LAYERS first, then roles within them:

1. layers with the same path that can hold the same weights (a norm not when the conv-norm
   adjacency of step 3 contradicts it, unless every layer has its template name);
2. structure: modules (name prefixes: blocks, stages, branches) whose layers have the same
   multiset of signatures (roles + shapes) pair top-down: under a paired parent, sub-modules of
   one signature pair by order, or by names when names clearly disagree with order (each pair
   taken against order must be both names' unique best match: counters of different scopes,
   `1.conv1` vs a flat stage's `conv1`, tie and are no evidence); a module with no counterpart
   (one side keeps its blocks in a list, the other not) is looked through.
   Inside a module pair (innermost first), a signature found once on each side pairs directly,
   several pair by order within the module or by names (relative to the module); several norms
   only in a way the conv-norm adjacency below does not contradict (names, else order, else
   left to step 3: pre-activation ports name norms after the conv they follow or the conv they
   feed, so equal names can mean different layers). Registration orders differ between
   implementations (a block's projection before or after its squeeze-excite); module contents
   do not;
3. per group (conv/linear/transposed conv, recurrent, the rest), a sequence alignment
   (Needleman-Wunsch, no gap cost) of the two layer orders for what is left. Two layers may pair
   when their roles match, their shapes are equal or equal after [out,in] <-> [out,in,1,1]
   (a state dict cannot tell a transposed conv from a conv: equal shapes pair, with a warning),
   they lie in the same paired modules, and, for a norm registered right after the conv whose
   output it normalises, the other side's norm is registered right after that conv's match
   (else order would give a shortcut's batch norm to the main branch when one implementation
   registers the shortcut first; a second pass drops this for registrations against the data
   flow). A pair scores MATCH plus NAME_WEIGHT times the similarity of the names (tokenised,
   synonyms folded) and is decided only when it lies on every near-optimal alignment (score
   within TIE of the best): otherwise the layers are reported "ambiguous" with their candidates,
   never guessed. The alignment repeats on what is left while it pairs anything (orders that
   cross). When the two sides put norms of one signature on different sides of their convs
   (the second pass pairs one against its adjacency, or of two matched convs only one has such
   a norm right after it while the adjacency paired two of them) and the alignment paired at
   least two of those norms, all of its pairs of them are reported "ambiguous": one side
   registers pre-activation norms before the conv they feed, the other after it, so the
   adjacency pairs each norm with its neighbour along the data flow, and a state dict cannot
   say which side of its conv a norm works on;
4. what is still left pairs by order within a family for a "mismatch" report (same roles,
   different shapes); the rest is "missing" (template only) or "unexpected" (source only).

Confidence per match: 1.0 same name; 0.95 alone in its module pair; 0.75 + 0.2 * name
similarity by order or names inside a module pair (0.05 less when the modules paired by names);
0.9 unique shape (the signature occurs once on each side); 0.7 + 0.3 * similarity by global order;
0.6 + 0.3 * similarity in a later round; 0.2 less in the second pass; 0.1 less for a reshape.
num_batches_tracked is bookkeeping: created as 0 when only the template has it, dropped when only
the source has it (both reported). The matching itself lives in hubfmt.matching.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from hubfmt.format.checkpoint import Checkpoint, LayerInfo
from hubfmt.errors import AlignmentError, ConversionError
from hubfmt.alignment import fusion
from hubfmt.alignment.grouping import OPTIONAL_ROLES, Layer, group_layers, transform_between
from hubfmt.alignment.matching import align_rounds, anchor_conflict, anchors, group_of, match_in_modules, module_pairs, relaxed_pairs, signature
from hubfmt.alignment.table import Mapping, Move, apply_mapping
from hubfmt.report import PROBLEMS, Event, Report
from hubfmt.alignment.rules import RuleSet, make_rule



@dataclass
class LayerMatch:
    source: str
    target: str
    op: str            # "", "conv1x1" or "conv_fc"
    confidence: float
    evidence: str
    tensors: list[tuple[str, str]] = field(default_factory=list)   # (source tensor, template tensor)


@dataclass
class Alignment:
    """The result of `align`: the tensor table, the layer matches, and the problems found."""

    template: Checkpoint
    mapping: Mapping
    matches: list[LayerMatch] = field(default_factory=list)
    report: Report = field(default_factory=Report)       # missing/unexpected/mismatch/ambiguous only
    source_label: str = ""
    template_label: str = ""
    source_layer_sizes: dict[str, int] = field(default_factory=dict, repr=False)   # path -> non-optional tensors
    # canonical source name -> its name in the source file, where they differ: the table shows
    # what the user's file calls a tensor, not what the adapter renamed it to.
    source_names: dict[str, str] = field(default_factory=dict, repr=False)
    # template tensor of a fused q/k/v layer that a merge fills -> that layer's path
    fused: dict[str, str] = field(default_factory=dict, repr=False)

    def problems(self, *, allow_missing: bool = False, allow_unexpected: bool = False) -> list[Event]:
        allowed = {a for a, ok in (("missing", allow_missing), ("unexpected", allow_unexpected)) if ok}
        return [e for e in self.report.problems if e.action not in allowed]

    def check(self, *, allow_missing: bool = False, allow_unexpected: bool = False) -> None:
        """Raise AlignmentError (exit status 1, with the table) when a problem is not allowed."""
        bad = self.problems(allow_missing=allow_missing, allow_unexpected=allow_unexpected)
        if bad:
            counts = {a: n for a in PROBLEMS if (n := sum(e.action == a for e in bad))}
            summary = ", ".join(f"{n} {a}" for a, n in counts.items())
            hint = " (--allow-missing / --allow-unexpected relax those)" if {"missing", "unexpected"} & set(counts) else ""
            families = self.unmatched_families(bad)
            if families:
                # Relaxing would write a model whose layers are missing or thrown away: not a fix.
                hint = (f"; this looks like an architecture mismatch, not a few optional tensors ({'; '.join(families[:3])}"
                        f"{' ...' if len(families) > 3 else ''}): --allow-missing/--allow-unexpected would write a "
                        "wrong model; check that the template is the same architecture, or map these layers with "
                        "a --rules file")
            raise AlignmentError(f"cannot align {self.source_label or 'the source'} to the template "
                                 f"{self.template_label}: {summary}{hint}", table=self.to_text(problems_only=True))

    def unmatched_families(self, bad: list[Event]) -> list[str]:
        """Left-over layers that look like an architecture mismatch: a family of layers (their
        paths with numbers as `*`: `blocks.*.attn.qkv`) of at least two layers that is unmatched
        as a whole on its side, or more than half of a side's layers unmatched."""
        sides = {"unexpected": set(self.source_layer_sizes),
                 "missing": {e.info.layer or n.rpartition(".")[0] for n, e in self.template.entries.items()}}
        out = []
        for action, layers in sides.items():
            left = {_layer_of(e.name, layers) for e in bad if e.action == action}
            if not left:
                continue
            if len(layers) >= 4 and len(left) > len(layers) / 2:
                out.append(f"{len(left)} of {len(layers)} {'source' if action == 'unexpected' else 'template'} "
                           f"layers {action}")
                continue
            family: dict[str, set[str]] = {}
            for path in layers:
                family.setdefault(re.sub(r"\d+", "*", path), set()).add(path)
            for fam in sorted({re.sub(r"\d+", "*", p) for p in left}):
                members = family.get(fam, set())
                if len(members) >= 2 and members <= left:
                    out.append(f"all {len(members)} layers {fam} {action}")
            # A whole numbered block (`layer1.2`: a deeper or shallower model) with two layers or more.
            blocks: dict[str, set[str]] = {}
            for path in layers:
                parts = path.split(".")
                for i in range(1, len(parts)):
                    if parts[i - 1].isdigit():
                        blocks.setdefault(".".join(parts[:i]), set()).add(path)
            whole = sorted(b for b, members in blocks.items() if len(members) >= 2 and members <= left
                           and not any(b.startswith(o + ".") for o in blocks if o != b and blocks[o] <= left))
            if whole:
                out.append(f"whole blocks {action}: {', '.join(whole[:4])}{' ...' if len(whole) > 4 else ''}")
            inside = self._inside_matched(action, left)
            if inside:
                out.append(f"{len(inside)} {'source' if action == 'unexpected' else 'template'} layers {action} between "
                           f"matched ones ({', '.join(inside[:3])}{' ...' if len(inside) > 3 else ''}): not a head "
                           "or a tail the other side lacks")
        return out

    def _inside_matched(self, action: str, left: set[str]) -> list[str]:
        """The unmatched layers of one side that lie between two matched layers in that side's
        order. A missing head (a backbone checkpoint) is at one end; a layer inside the network
        (Gluon's extra expansion conv, biased 1x1 convs) means the two are other networks, and
        --allow-missing would leave it with the template's values."""
        if action == "missing":
            order = list(dict.fromkeys(e.info.layer or n.rpartition(".")[0] for n, e in self.template.entries.items()))
            matched = {m.target for m in self.matches}
        else:
            order = list(self.source_layer_sizes)
            matched = {m.source for m in self.matches}
        at = [i for i, path in enumerate(order) if path in matched]
        if not at:
            return []
        return [path for i, path in enumerate(order) if at[0] < i < at[-1] and path in left]

    def apply(self, source: Checkpoint) -> Checkpoint:
        """The aligned checkpoint: source tensors under the template's names (lazy, no data read),
        with the template's tensor infos; its report holds the renames and the allowed problems."""
        report = _staged(Report())
        out = apply_mapping(source, self.mapping, template=self.template, keep_unmapped=False, report=report)
        for name, path in self.fused.items():
            if name in out:     # spec 3.6: a fused projection records its parts in row order
                out.layers.setdefault(path, LayerInfo("linear")).attrs[fusion.ATTR] = list(fusion.PARTS)
        report.extend(self.report)
        out.report = report
        return out

    def layer_map(self) -> dict[str, str]:
        """source layer path -> template layer path (to pair named intermediate outputs in hubfmt.verify)."""
        return {m.source: m.target for m in self.matches if m.op not in ("split", "merge")}   # not a fused layer's parts

    def to_rules(self) -> RuleSet:
        """The matches as an editable rules file: one glob rule per renamed layer where the whole
        layer moves role for role, else one exact rule per tensor (`hubfmt align --save-rules`)."""
        rules = []
        for mv in self.mapping.moves:
            if mv.op in ("split", "merge"):
                rules.extend(_fused_rule(mv))
        for m in self.matches:
            if m.op in ("split", "merge"):
                continue
            pairs = [(s, t) for s, t in m.tensors if s != t]
            if not pairs:
                continue
            # A glob also carries num_batches_tracked along; alignment would drop it, rules keep it.
            whole = ("*" not in m.source and len(m.tensors) >= self.source_layer_sizes.get(m.source, 0)
                     and all(s.startswith(m.source + ".") and t.startswith(m.target + ".")
                             and s[len(m.source) + 1:] == t[len(m.target) + 1:] and "." not in s[len(m.source) + 1:]
                             for s, t in m.tensors))
            if m.op == "conv_fc":
                raise ConversionError(f"{m.source} -> {m.target}: a Linear <-> {m.op} reshape has no rules-file form "
                                      "yet; convert with --template instead of a saved rules file")
            reshape = {"reshape": "conv1x1"} if m.op == "conv1x1" else {}
            if whole:
                rules.append(make_rule({"glob": f"{m.source}.*", "replace": f"{m.target}.\\1", **reshape}))
                continue
            for s, t in pairs:
                rules.append(make_rule({"pattern": re.escape(s), "replace": t.replace("\\", "\\\\"), **reshape}))
        return RuleSet(rules)

    def to_json(self) -> dict:
        return {
            "source": self.source_label,
            "template": self.template_label,
            "layers": [{"source": m.source, "target": m.target, "op": m.op or "rename",
                        "confidence": round(m.confidence, 2), "evidence": m.evidence} for m in self.matches],
            "tensors": self.mapping.to_rows(),
            "counts": self.report.counts(),
            "problems": [e.to_json() for e in self.report.problems],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def to_text(self, *, problems_only: bool = False) -> str:
        """The proposed table (unless `problems_only`), then every problem (the mismatch table among them)."""
        renamed = sum(1 for m in self.matches if m.source != m.target)
        fused = Counter(mv.op for mv in self.mapping.moves if mv.op in ("split", "merge"))
        lines = [f"alignment of {self.source_label or 'source'} to {self.template_label or 'template'}: "
                 f"{len(self.matches)} layers matched ({renamed} renamed, "
                 f"{sum(1 for m in self.matches if m.op == 'conv1x1')} reshaped"
                 + "".join(f", {n} tensors {'split' if op == 'split' else 'concatenated'}" for op, n in sorted(fused.items()))
                 + ")"]
        if not problems_only:
            lines.append(self.mapping.to_text(self.source_names))
        for action in PROBLEMS:
            evs = self.report.of(action)
            if evs:
                lines.append(f"{action} ({len(evs)}):")
                width = min(60, max(len(e.name) for e in evs))
                lines.extend(f"  {e.name:<{width}}  {e.detail}".rstrip() for e in evs)
        if not self.report.problems:
            lines.append("no problems")
        return "\n".join(lines)


def _fused_rule(mv: Move) -> list:
    """The rules-file form of a split/merge row: the parts' names differ in one place, `{part}`
    (`attention.{part}_proj.weight`); none when they do not (the table is then the only record)."""
    parts = mv.targets if mv.op == "split" else mv.sources
    head = len(_common_prefix(parts))
    tail = len(_common_prefix([p[head:][::-1] for p in parts]))
    middles = [p[head:len(p) - tail] for p in parts]
    if not all(middles) or len(set(middles)) != len(middles) or any("{" in p or "}" in p for p in parts):
        return []
    pre, post = parts[0][:head], parts[0][len(parts[0]) - tail:]
    spec = {"axis": mv.axis, "parts": middles}
    if mv.op == "split":
        return [make_rule({"pattern": re.escape(mv.sources[0]),
                           "replace": (pre + "{part}" + post).replace("\\", "\\\\"), "split": spec})]
    return [make_rule({"pattern": re.escape(pre) + "{part}" + re.escape(post),
                       "replace": mv.targets[0].replace("\\", "\\\\"), "merge": spec})]


def _common_prefix(names) -> str:
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _layer_of(name: str, layers: set[str]) -> str:
    """The longest layer path of `layers` that `name` (a tensor name) lies under."""
    cut = name
    while cut and cut not in layers:
        cut = cut.rpartition(".")[0]
    return cut or name.rpartition(".")[0]


def _staged(r: Report) -> Report:
    r.stage = "align"
    return r


def align_checkpoints(source: Checkpoint, tmpl: Checkpoint, *, source_label: str = "",
                      template_label: str = "") -> Alignment:
    """Align `source` to the target `tmpl` (hubfmt.align takes paths and listings too). Never
    raises for unmatched tensors: call `.check()`.

    >>> a = align_checkpoints(hubfmt.read("dpn.params"), hubfmt.read("dpn_torch.pth"))   # doctest: +SKIP
    >>> a.check(); print(a.to_text()); ckpt = a.apply(source)                            # doctest: +SKIP
    """
    template_label = template_label or tmpl.source.file or "(in-memory template)"
    # A fused q/k/v projection facing three separate ones is aligned as its three parts.
    S, T, fusions = fusion.split_fused(group_layers(source), group_layers(tmpl))
    report = _staged(Report())
    decided: dict[int, tuple[int, str, float, str]] = {}    # source index -> (target index, op, confidence, evidence)
    taken: set[int] = set()

    sig_count_s, sig_count_t = Counter(map(signature, S)), Counter(map(signature, T))

    t_by_path = {t.path: t for t in T}
    anchor_s, anchor_t = anchors(S), anchors(T)
    # Norms last, and not onto a norm of the same name registered right after a conv that is not
    # the match of the conv before this one: pre-activation ports call the norm feeding conv1
    # `bn1` or the one after it `bn1` (post-activation habit), and the rest of the alignment
    # then decides, or reports, those two. Unless every layer has its template name (a rules
    # file renamed them all, or both sides are one implementation): then the names are the map.
    all_named = {s.path for s in S} == set(t_by_path)
    for s in sorted(S, key=lambda x: x.family == "norm"):
        t = t_by_path.get(s.path)
        op = transform_between(s, t, same_name=True) if t is not None else None
        if t is not None and op is not None and s.family == "norm" and not all_named and anchor_conflict(
                s.index, t.index, anchor_s, anchor_t, decided, {v[0]: k for k, v in decided.items()}):
            continue
        if t is not None and op is not None:
            decided[s.index] = (t.index, op, 1.0 - (0.1 if op else 0.0), "same name")
            taken.add(t.index)

    # Structure beats order: inside blocks that pair up, registration orders may cross.
    pairs = module_pairs(S, T)
    held = match_in_modules(S, T, pairs, decided, taken, anchor_s, anchor_t)
    held_t = {j for js in held.values() for j in js}
    # A pair the sequence alignment proposes must not cross paired modules; and a norm layer
    # registered right after the conv whose output it normalises (its anchor) pairs only with a
    # norm anchored on that conv's match: order alone would pair a shortcut's batch norm with the
    # main branch's when one implementation registers the shortcut first. When that leaves layers
    # unpaired (a registration order against the data flow), a last pass drops the anchors.
    mod_s: dict[int, set] = {}
    mod_t: dict[int, set] = {}
    for n, (_, a, _, b, _) in enumerate(pairs):
        for i in a:
            mod_s.setdefault(i, set()).add(n)
        for j in b:
            mod_t.setdefault(j, set()).add(n)
    use_anchors = True

    def context(s: Layer, t: Layer) -> float | None:
        if mod_s.get(s.index, set()) != mod_t.get(t.index, set()) or s.index in held or t.index in held_t:
            return None
        ps, pt = anchor_s.get(s.index), anchor_t.get(t.index)
        if use_anchors and ps in decided and pt in taken and decided[ps][0] != pt:
            return None
        return 0.0

    # Groups in sorted order: "affine" before "rest", so a norm's anchor is decided first.
    by_pass: list[set[int]] = []
    for use_anchors in (True, False):
        ambiguous: dict[int, list[int]] = {}     # source index -> candidate target indices
        involved: set[int] = set()                # target indices among those candidates
        before = set(decided)
        for group in sorted({group_of(x) for x in S + T}):
            align_rounds(group, S, T, decided, taken, ambiguous, involved, context, sig_count_s, sig_count_t,
                          "" if use_anchors else " (second pass, conv-norm adjacency ignored)")
        by_pass.append(set(decided) - before)
    unsettled = _unsettle_shifted_norms(S, T, decided, taken, ambiguous, involved, by_pass, anchor_s, anchor_t)
    ambiguous.update(held)
    involved.update(held_t)

    mapping, matches = _build(S, T, decided)
    mapping = Mapping(fusion.collapse(mapping.moves, fusions, report))
    for m in matches:
        if m.source in fusions.parts or m.target in fusions.parts:
            m.op = "split" if m.source in fusions.parts else "merge"
    for si, (ti, *_rest) in sorted(decided.items()):
        if S[si].family != T[ti].family and S[si].kind_known and T[ti].kind_known:
            report.add("warning", S[si].path, f"kinds differ: source {S[si].kind}, template {T[ti].kind}; the "
                                              f"shapes agree, so the values are copied unchanged and the template's "
                                              f"kind is kept. Harmless when a file cannot tell the two apart (a "
                                              f"state dict stores a conv and a conv-transpose alike); otherwise "
                                              f"check the pairing")
    for si, tis in sorted(ambiguous.items()):
        s = S[si]
        if si in unsettled:
            why = ("norms registered before their convs on one side, after them on the other (pre-activation?); "
                   "a state dict cannot say which conv each one works on")
        elif si in held:
            why = ("norms registered in different places of their module on the two sides, and their names do not "
                   "say which is which (names alike, e.g. before/after ~ norm1/norm2, decide; or a --rules file)")
        else:
            why = "same roles and shapes; order and names cannot settle it"
        report.add("ambiguous", s.path, f"{s.describe()}: candidates {', '.join(T[t].path for t in tis)} ({why})")

    left_s = [s for s in S if s.index not in decided and s.index not in ambiguous]
    left_t = [t for t in T if t.index not in taken and t.index not in involved]
    _report_leftovers(left_s, left_t, report)
    names = {n: source[n].info.original_name for n in source
             if source[n].info.original_name and source[n].info.original_name != n}
    merged = {t for mv in mapping.moves if mv.op == "merge" for t in mv.targets}
    return Alignment(tmpl, mapping, matches, report, source_label, template_label,
                     {s.path: len(s.required) for s in S}, names,
                     {t: p for t, p in fusions.fused_targets().items() if t in merged})


def _unsettle_shifted_norms(S, T, decided, taken, ambiguous, involved, by_pass, anchor_s, anchor_t) -> set[int]:
    """Turn the sequence alignment's norm pairs of a signature into "ambiguous" when the two
    sides put norms of that signature on different sides of their convs, and the alignment
    paired at least two of them (which it could as well have swapped). Two marks of that: a
    pair of matched convs of which only one has a norm of that signature registered right after
    it (when the alignment paired two such norms by that adjacency), or a second-pass pair
    against the adjacency.

    Pre-activation blocks: one implementation registers each norm before the conv it feeds
    (bn1, conv1, bn2, conv2), the other after it (conv1, bn1, conv2, bn2), or the norms after
    both convs. With equal channel counts the adjacency pairs each norm with its neighbour one
    step along the data flow (the norm feeding conv2 with the one feeding conv1), order pairs
    the rest, and every pair looks consistent while all are wrong. A state dict cannot tell that
    from a network whose norms really do normalise the conv registered before them, so none of
    these pairs is decided. Pairs decided inside paired modules are not touched (the module
    step already refuses pairings the adjacency contradicts), nor is a norm that is the only
    one of its signature the alignment paired. Returns the source indices made ambiguous."""
    first, second = by_pass
    reverse = {v[0]: k for k, v in decided.items()}
    against = {signature(S[i]) for i in second if S[i].family == "norm"
               and anchor_conflict(i, decided[i][0], anchor_s, anchor_t, decided, reverse)}
    norm_after_s = {conv: norm for norm, conv in anchor_s.items()}
    norm_after_t = {conv: norm for norm, conv in anchor_t.items()}
    misplaced = set()
    for si, (ti, *_rest) in decided.items():
        a, b = norm_after_s.get(si), norm_after_t.get(ti)
        if (a is None) != (b is None):
            misplaced.add(signature(S[a]) if a is not None else signature(T[b]))
    # ... where the adjacency had a say: a pair of norms both registered right after a conv.
    # (A side that keeps its norms apart from its convs gives the adjacency nothing to go on;
    # order pairs those, as it pairs same-shape convs.)
    against |= {signature(S[i]) for i in first | second if S[i].family == "norm" and signature(S[i]) in misplaced
                and i in anchor_s and decided[i][0] in anchor_t}
    suspects: dict[tuple, list[int]] = {}
    for i in sorted(first | second):
        if S[i].family == "norm" and signature(S[i]) in against:
            suspects.setdefault(signature(S[i]), []).append(i)
    unsettled: set[int] = set()
    for group in suspects.values():
        if len(group) < 2:
            continue
        candidates = sorted(decided[i][0] for i in group)
        for i in group:
            taken.discard(decided.pop(i)[0])
            ambiguous[i] = candidates
        involved.update(candidates)
        unsettled.update(group)
    return unsettled


def _report_leftovers(left_s: list[Layer], left_t: list[Layer], report: Report) -> None:
    """Layers nothing matched: same roles in order within a group -> "mismatch" (the shape
    table); the rest "unexpected" (source) or "missing" (template)."""
    paired_s, paired_t = set(), set()
    while True:   # in rounds, for orders that cross
        pairs = []
        for group in sorted({group_of(x) for x in left_s + left_t}):
            gs = [s for s in left_s if group_of(s) == group and s.index not in paired_s]
            gt = [t for t in left_t if group_of(t) == group and t.index not in paired_t]
            pairs += [(gs[i], gt[j]) for i, j in relaxed_pairs(gs, gt)]
        if not pairs:
            break
        for s, t in pairs:
            paired_s.add(s.index)
            paired_t.add(t.index)
            differ = [r for r in s.tensors if r in s.required and s.shapes[r] != t.shapes[r]]
            for role in differ:
                report.add("mismatch", s.tensors[role], f"-> {t.tensors[role]}: source {list(s.shapes[role])} "
                                                        f"vs template {list(t.shapes[role])}")
            if not differ:   # it fits, but paired modules put the two in different places
                for name in s.tensors.values():
                    report.add("unexpected", name, f"fits {t.path} by shape, but not where the modules put it")
                for name in t.tensors.values():
                    report.add("missing", name, f"{s.path} fits by shape, but not where the modules put it")
    for s in left_s:
        if s.index not in paired_s:
            for name in s.tensors.values():
                report.add("unexpected", name, f"{s.describe()}: no layer of the template takes it")
    for t in left_t:
        if t.index not in paired_t:
            for name in t.tensors.values():
                report.add("missing", name, f"{t.describe()}: no source layer fits")


def _build(S, T, decided) -> tuple[Mapping, list[LayerMatch]]:
    """Tensor moves in the template's order for the decided layer pairs."""
    by_target = {ti: (si, op, conf, ev) for si, (ti, op, conf, ev) in decided.items()}
    moves, matches = [], []
    for t in T:
        if t.index not in by_target:
            continue
        si, op, conf, ev = by_target[t.index]
        s = S[si]
        match = LayerMatch(s.path, t.path, op, conf, ev)
        matches.append(match)
        for role, tname in t.tensors.items():
            if role in s.tensors:
                mv_op = op if role == "weight" else ""
                shape = tuple(t.shapes["weight"]) if mv_op == "conv_fc" else ()
                moves.append(Move((s.tensors[role],), (tname,), mv_op, shape=shape, confidence=conf, note=ev))
                match.tensors.append((s.tensors[role], tname))
            elif role in OPTIONAL_ROLES:
                moves.append(Move((), (tname,), "create", note="expected by the template, absent from the source (0)"))
        for role, sname in s.tensors.items():
            if role not in t.tensors and role in OPTIONAL_ROLES:
                moves.append(Move((sname,), (), "drop", note="the template has no place for it"))
    return Mapping(moves), matches
