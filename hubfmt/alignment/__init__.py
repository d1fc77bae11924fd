"""Renaming and template alignment: map a source checkpoint's names onto the names a destination
expects, by rules (a TOML table) or by aligning to a template.

    target.py    alignment targets: a Checkpoint of any format, or a names+shapes listing
    grouping.py  a checkpoint seen as layers (kinds, roles, shapes, name tokens)
    matching.py  the matching steps: modules by content, layers inside them, sequence alignment
    aligner.py   align_checkpoints: the steps in order, confidence, problems -> Alignment
    table.py     the name table (Mapping of Moves) and applying it lazily
    rules.py     rules files -> a Mapping
"""
from hubfmt.alignment.aligner import Alignment, LayerMatch, align_checkpoints
from hubfmt.alignment.rules import Rule, RuleSet, load_rules
from hubfmt.alignment.table import Mapping, Move, apply_mapping
from hubfmt.alignment.target import load_target, parse_listing

__all__ = ["Alignment", "LayerMatch", "align_checkpoints", "Rule", "RuleSet", "load_rules", "Mapping", "Move",
           "apply_mapping", "load_target", "parse_listing"]
