r"""Rename rules: an ordered, declarative table of pattern -> replacement on canonical names.

A rules file is TOML, one `[[rule]]` table per rule; for each tensor the FIRST rule whose pattern
matches the whole name applies, names no rule matches are kept:

    [[rule]]                                  # glob sugar: * is one name segment, ** any text
    glob = "_blocks.*._bn1.*"                 # each * / ** is a capture, \1 \2 ... in replace
    replace = 'blocks.\1.bn1.\2'              # 'literal' TOML strings keep backslashes

    [[rule]]                                  # a regular expression (Python re, full match)
    pattern = 'fc6\.(weight|bias)'
    replace = 'classifier.\1'
    reshape = "conv1x1"                       # [out,in] <-> [out,in,1,1] (1-D tensors untouched)

    [[rule]]                                  # one fused tensor -> parts; {part} names each
    pattern = '(.*)\.qkv\.(weight|bias)'
    replace = '\1.{part}.\2'
    split = { axis = 0, parts = ["q", "k", "v"] }          # optional: sizes = [64, 32, 32]

    [[rule]]                                  # the parts -> one tensor, in `parts` order
    pattern = '(.*)\.{part}\.(weight|bias)'
    replace = '\1.qkv.\2'
    merge = { axis = 0, parts = ["q", "k", "v"] }

    [[rule]]                                  # a Dense after a Flatten: decide its row order
    glob = "fc1.weight"                       # (spec 3.5; 1-D tensors untouched)
    replace = "fc1.weight"
    permute = "flatten:HWC->CHW:7x7"          # rows of a channels-last source -> canonical;
                                              # "flatten:CHW->HWC:7x7": rows of a channels-first
                                              # source, a channels-last writer permutes them;
                                              # "flatten:as-is": keep them

Invertibility: a rules file is invertible rule by rule (`RuleSet.inverse()`) when every rule is a
glob whose replacement uses each capture exactly once; regex rules are not (a regex has no unique inverse). The inverse rules undo
the names the forward rules produced; names the forward rules did not touch may match them too.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from hubfmt.format.checkpoint import Checkpoint
from hubfmt.errors import ConversionError, HubfmtError
from hubfmt.alignment.table import Mapping, Move, apply_mapping, conv1x1_shape, split_sizes
from hubfmt.io import flatten
from hubfmt.report import Report

PART = "{part}"
_REF = re.compile(r"\\(\d+)|\\g<(\d+)>")


def _glob_regex(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append("(.*)")
            i += 2
        elif glob[i] == "*":
            out.append("([^.]*)")
            i += 1
        elif glob.startswith(PART, i):
            out.append(PART)
            i += len(PART)
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Rule:
    """One rule; `pattern` is a regex (from `glob` when given) that may contain {part}."""

    pattern: str
    replace: str
    glob: str = ""
    reshape: str = ""                 # "" or "conv1x1"
    split: dict = field(default_factory=dict)     # {"axis": int, "parts": [str], "sizes": [int]}
    merge: dict = field(default_factory=dict)     # {"axis": int, "parts": [str]}
    permute: str = ""                 # "" or a flatten op (hubfmt.io.flatten.rule_op)

    @property
    def parts(self) -> list[str]:
        return list((self.split or self.merge).get("parts", []))

    def describe(self) -> str:
        return f"{'glob ' + self.glob if self.glob else 'pattern ' + self.pattern} -> {self.replace}"

    def matchers(self) -> list[tuple[str, re.Pattern]]:
        """(part, compiled full-match regex) — one per part for merge rules, else one with part ''."""
        if self.merge:
            return [(p, re.compile(self.pattern.replace(PART, re.escape(p)))) for p in self.parts]
        return [("", re.compile(self.pattern))]

    def inverse(self) -> "Rule":
        if not self.glob:
            raise ConversionError(f"rule '{self.describe()}' is a regular expression, which has no unique inverse; "
                                  "write it as a glob or give the inverse rules explicitly")
        captures = re.findall(r"\*\*|\*", self.glob)
        refs, literal, pos = [], [], 0
        for m in _REF.finditer(self.replace):
            literal.append(self.replace[pos:m.start()])
            refs.append(int(m.group(1) or m.group(2)))
            pos = m.end()
        literal.append(self.replace[pos:])
        if sorted(refs) != list(range(1, len(captures) + 1)):
            raise ConversionError(f"rule '{self.describe()}' does not use each capture exactly once; it has no inverse")
        # Inverse glob: the replacement with each reference turned back into its wildcard.
        inv_glob = literal[0] + "".join(captures[r - 1] + lit for r, lit in zip(refs, literal[1:], strict=True))
        if "\\" in inv_glob or any("*" in lit for lit in literal):
            raise ConversionError(f"rule '{self.describe()}': its replacement has escapes or '*'; it has no inverse")
        # Inverse replacement: the glob with its k-th wildcard replaced by the k-th reference's slot.
        slot = {r: i + 1 for i, r in enumerate(refs)}
        pieces = re.split(r"\*\*|\*", self.glob)
        inv_replace = pieces[0] + "".join(f"\\{slot[k + 1]}" + piece for k, piece in enumerate(pieces[1:]))
        permute = {"permute": _inverse_permute(self.permute)} if self.permute else {}
        return make_rule({"glob": inv_glob, "replace": inv_replace, "reshape": self.reshape, **permute,
                          **({"merge": self.split} if self.split else {}), **({"split": self.merge} if self.merge else {})})


def make_rule(d: dict, where: str = "rule") -> Rule:
    """A Rule from one `[[rule]]` table (validated: one clear error per problem)."""
    known = {"pattern", "glob", "replace", "reshape", "split", "merge", "permute"}
    unknown = set(d) - known
    if unknown:
        raise ConversionError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    if ("pattern" in d) == ("glob" in d):
        raise ConversionError(f"{where}: give exactly one of 'pattern' or 'glob'")
    if not isinstance(d.get("replace"), str):
        raise ConversionError(f"{where}: 'replace' (a string) is required")
    glob = d.get("glob", "")
    pattern = _glob_regex(glob) if glob else d["pattern"]
    reshape = d.get("reshape", "")
    if reshape not in ("", "conv1x1"):
        raise ConversionError(f"{where}: reshape must be \"conv1x1\", not {reshape!r}")
    split, merge = dict(d.get("split", {})), dict(d.get("merge", {}))
    if split and merge:
        raise ConversionError(f"{where}: a rule either splits or merges, not both")
    for key, spec, holder in (("split", split, d["replace"]), ("merge", merge, pattern)):
        if not spec:
            continue
        parts = spec.get("parts")
        if not (isinstance(parts, list) and len(parts) >= 2 and all(isinstance(p, str) and p for p in parts)):
            raise ConversionError(f"{where}: {key}.parts must list at least two part names")
        if PART not in holder:
            raise ConversionError(f"{where}: a {key} rule needs {PART} in its {'replace' if key == 'split' else 'pattern'}")
        if not isinstance(spec.get("axis", 0), int):
            raise ConversionError(f"{where}: {key}.axis must be an integer")
        sizes = spec.get("sizes", [])
        if sizes and (len(sizes) != len(parts) or not all(isinstance(s, int) and s > 0 for s in sizes)):
            raise ConversionError(f"{where}: {key}.sizes must give one positive size per part")
    if PART in pattern and not merge:
        raise ConversionError(f"{where}: {PART} in the pattern only makes sense in a merge rule")
    permute = d.get("permute", "")
    if permute:
        if not isinstance(permute, str):
            raise ConversionError(f"{where}: permute must be a string such as \"flatten:HWC->CHW:7x7\"")
        if split or merge or reshape:
            raise ConversionError(f"{where}: a permute rule neither reshapes, splits nor merges")
        flatten.rule_op(permute, f"{where}: permute")
    rule = Rule(pattern, d["replace"], glob, reshape, split, merge, permute)
    try:
        rule.matchers()   # compiles every pattern
    except re.error as e:
        raise ConversionError(f"{where}: bad pattern {pattern!r}: {e}") from None
    return rule


@dataclass
class RuleSet:
    """Ordered rules; the first whose pattern matches a whole name applies."""

    rules: list[Rule] = field(default_factory=list)

    @classmethod
    def from_dicts(cls, tables: list[dict]) -> "RuleSet":
        return cls([make_rule(t, f"rule {i + 1}") for i, t in enumerate(tables)])

    @classmethod
    def loads(cls, text: str, path: str | None = None) -> "RuleSet":
        """Parse a rules file's text.

        >>> RuleSet.loads("[[rule]]\\nglob = 'a.*'\\nreplace = 'b.\\\\1'").rules[0].replace
        'b.\\\\1'
        """
        toml = _tomllib()
        try:
            data = toml.loads(text)
        except toml.TOMLDecodeError as e:
            raise ConversionError(f"not a valid TOML rules file: {e}", path) from None
        unknown = set(data) - {"rule"}
        if unknown or not isinstance(data.get("rule", []), list):
            raise ConversionError("a rules file holds only [[rule]] tables", path)
        try:
            return cls.from_dicts(data.get("rule", []))
        except ConversionError as e:
            raise ConversionError(e.message, path) from None

    def inverse(self) -> "RuleSet":
        """Rules that undo these (see the module docstring for when that exists)."""
        return RuleSet([r.inverse() for r in self.rules])

    def plan(self, ckpt: Checkpoint) -> Mapping:
        """The concrete table these rules give for `ckpt` (the dry run). Raises ConversionError
        for collisions, incomplete merges, and splits/reshapes the shapes do not allow."""
        moves: list[Move] = []
        merges: dict[tuple[int, str], dict[str, str]] = {}
        merge_slot: dict[tuple[int, str], int] = {}
        for name in ckpt:
            rule, index, part, m = self._first_match(name)
            if rule is None:
                continue
            target = m.expand(rule.replace)
            shape = ckpt[name].tensor.shape
            note = f"rule {index + 1}: {rule.describe()}"
            if rule.split:
                targets = tuple(target.replace(PART, p) for p in rule.parts)
                axis = rule.split.get("axis", 0)
                sizes = tuple(rule.split.get("sizes", ()))
                if not 0 <= axis < len(shape) or split_sizes(shape[axis], len(targets), sizes) is None:
                    raise ConversionError(f"{name}: shape {list(shape)} does not split into {len(targets)} parts "
                                          f"along axis {axis} ({note})")
                moves.append(Move((name,), targets, "split", axis, sizes, note=note))
            elif rule.merge:
                key = (index, target)
                if key not in merges:
                    merges[key] = {}
                    merge_slot[key] = len(moves)
                    moves.append(None)  # type: ignore[arg-type]  # placeholder: the merged tensor sits where its first part was
                merges[key][part] = name
            elif rule.permute and len(shape) != 1:
                if len(shape) != 2:
                    raise ConversionError(f"{name}: a flatten op applies to a linear weight [out, C*H*W], not "
                                          f"{list(shape)} ({note})")
                hw = flatten.rule_op(rule.permute)[1]
                if hw is not None:
                    flatten.shape_from_option(hw, shape[1], name, "permute")
                moves.append(Move((name,), (target,), "flatten", note=note, permute=rule.permute))
            else:
                op = ""
                if rule.reshape == "conv1x1" and len(shape) != 1:
                    if conv1x1_shape(shape) is None:
                        raise ConversionError(f"{name}: shape {list(shape)} is neither [out,in] nor [out,in,1,1] ({note})")
                    op = "conv1x1"
                moves.append(Move((name,), (target,), op, note=note))
        for key, found in merges.items():
            rule = self.rules[key[0]]
            absent = [p for p in rule.parts if p not in found]
            if absent:
                raise ConversionError(f"merge into {key[1]} lacks part(s) {', '.join(absent)} "
                                      f"(found {', '.join(found.values())}; rule {key[0] + 1}: {rule.describe()})")
            moves[merge_slot[key]] = Move(tuple(found[p] for p in rule.parts), (key[1],), "merge",
                                          rule.merge.get("axis", 0), note=f"rule {key[0] + 1}: {rule.describe()}")
        mapping = Mapping(moves)
        _check_collisions(ckpt, mapping)
        return mapping

    def apply(self, ckpt: Checkpoint, report: Report | None = None) -> Checkpoint:
        """`ckpt` with the rules applied (lazy: no tensor data is read).

        >>> out = load_rules("rules.toml").apply(hubfmt.read("model.pth"))   # doctest: +SKIP
        """
        return apply_mapping(ckpt, self.plan(ckpt), report=report)

    def dumps(self) -> str:
        """TOML text of these rules (what `hubfmt align --save-rules` writes)."""
        out = []
        for r in self.rules:
            out.append("[[rule]]")
            out.append(f"glob = {_toml_str(r.glob)}" if r.glob else f"pattern = {_toml_str(r.pattern)}")
            out.append(f"replace = {_toml_str(r.replace)}")
            if r.reshape:
                out.append(f"reshape = {_toml_str(r.reshape)}")
            if r.permute:
                out.append(f"permute = {_toml_str(r.permute)}")
            for key, spec in (("split", r.split), ("merge", r.merge)):
                if spec:
                    items = ", ".join(f"{k} = {json.dumps(v)}" for k, v in spec.items())
                    out.append(f"{key} = {{ {items} }}")
            out.append("")
        return "\n".join(out)

    def _first_match(self, name: str):
        for i, rule in enumerate(self.rules):
            for part, rx in rule.matchers():
                m = rx.fullmatch(name)
                if m:
                    return rule, i, part, m
        return None, -1, "", None


def _inverse_permute(spec: str) -> str:
    order, hw = flatten.rule_op(spec)
    if hw is None:
        return spec
    return f"flatten:{'CHW->HWC' if order == 'HWC' else 'HWC->CHW'}:{hw[0]}x{hw[1]}"


def _check_collisions(ckpt: Checkpoint, mapping: Mapping) -> None:
    moved = {s for m in mapping.moves for s in m.sources}
    seen: dict[str, str] = {n: n for n in ckpt if n not in moved}
    for m in mapping.moves:
        for t in m.targets:
            if t in seen:
                raise ConversionError(f"{', '.join(m.sources)} and {seen[t]} would both be named {t}")
            seen[t] = ", ".join(m.sources)


def _toml_str(s: str) -> str:
    # Literal strings keep regex backslashes readable; fall back to an escaped basic string.
    if "'" not in s and "\n" not in s:
        return f"'{s}'"
    return json.dumps(s)


def _tomllib():
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise HubfmtError("reading a rules file needs Python >= 3.11 (tomllib) or `pip install tomli`") from None
    return tomllib


def load_rules(path) -> RuleSet:
    """Read a rules file.

    >>> rules = load_rules("efficientnet.toml")       # doctest: +SKIP
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise HubfmtError(f"cannot read the rules file: {e.strerror}", path) from None
    return RuleSet.loads(text, str(path))
