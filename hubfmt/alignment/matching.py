"""The matching steps of template alignment (hubfmt.align): modules paired by content, layers
inside them, and sequence alignment of layer orders with ambiguity detection.

Everything here works on `hubfmt.layers.Layer` lists and fills two dicts the caller owns:
`decided` (source layer index -> (template layer index, op, confidence, evidence)) and `taken`
(template layer indices already used).
"""
from __future__ import annotations

import itertools

from hubfmt.alignment.grouping import Layer, name_similarity, name_tokens, transform_between

MATCH = 10.0        # score of any compatible pair in the sequence alignment
NAME_WEIGHT = 2.0   # times the name similarity (0..1) added to it
TIE = 1.0           # alignments within this of the best are equally plausible: not decisive
# Sequence-alignment groups; transposed convs go with convs (a state dict cannot tell them apart).
_GROUP = {"affine": "affine", "deconv": "affine", "recurrent": "recurrent"}   # the rest share one


def group_of(layer: Layer) -> str:
    return _GROUP.get(layer.family, "rest")


def signature(layer: Layer) -> tuple:
    return tuple(sorted((r, layer.shapes[r]) for r in layer.required))


def _module_members(layers: list[Layer]) -> dict[str, frozenset]:
    """module prefix -> indices of the layers under it ("" is the whole model)."""
    members: dict[str, list[int]] = {"": [x.index for x in layers]}
    for layer in layers:
        parts = layer.path.split(".")
        for k in range(1, len(parts)):
            members.setdefault(".".join(parts[:k]), []).append(layer.index)
    return {p: frozenset(v) for p, v in members.items()}


def _child_modules(prefix: str, members: dict[str, frozenset]) -> list[str]:
    """Direct sub-modules of `prefix` holding at least two layers, wrappers (a module with the same
    layers as its parent, e.g. a Sequential) looked through; in layer order."""
    out: list[str] = []
    todo = [prefix]
    while todo:
        parent = todo.pop()
        head = parent + "." if parent else ""
        for p, idxs in members.items():
            if p.startswith(head) and p != parent and "." not in p[len(head):] and len(idxs) >= 2:
                (todo if idxs == members[parent] else out).append(p)
    return sorted(out, key=lambda p: min(members[p]))


def module_pairs(S: list[Layer], T: list[Layer]) -> list[tuple[str, frozenset, str, frozenset, bool]]:
    """Modules of the two sides that hold the same multiset of layer signatures, paired top-down:
    under a paired parent, sub-modules of one signature pair by order, or by names when names
    clearly disagree with order. Returns (source prefix, its layers, template prefix, its layers,
    paired by names), innermost first."""
    ms, mt = _module_members(S), _module_members(T)
    pairs = []

    def sig(idxs, layers) -> tuple:
        return tuple(sorted(signature(layers[i]) for i in idxs))

    def visit(ps: str, pt: str) -> None:
        cs_all, ct_all = _child_modules(ps, ms), _child_modules(pt, mt)
        closed: set[str] = set()
        while True:
            groups: dict[tuple, tuple[list[str], list[str]]] = {}
            for c in cs_all:
                groups.setdefault(sig(ms[c], S), ([], []))[0].append(c)
            for c in ct_all:
                groups.setdefault(sig(mt[c], T), ([], []))[1].append(c)
            # A module without a counterpart (one side groups its blocks in a list, the other
            # does not) is looked through, largest first: its sub-modules take part instead.
            lone = [(len(side[c]), k, c) for cs, ct in groups.values() if len(cs) != len(ct)
                    for k, side, names in ((0, ms, cs), (1, mt, ct)) for c in names if c not in closed]
            if not lone:
                break
            _, k, c = max(lone)
            closed.add(c)
            if k == 0:
                cs_all = sorted(set(cs_all) - {c} | set(_child_modules(c, ms)), key=lambda p: min(ms[p]))
            else:
                ct_all = sorted(set(ct_all) - {c} | set(_child_modules(c, mt)), key=lambda p: min(mt[p]))
        for cs, ct in groups.values():
            if len(cs) != len(ct):
                continue
            rel_s = [name_tokens(c[len(ps) + 1 if ps else 0:]) for c in cs]
            rel_t = [name_tokens(c[len(pt) + 1 if pt else 0:]) for c in ct]
            chosen = _order_or_names(rel_s, rel_t)
            by_names = chosen != [(k, k) for k in range(len(cs))]
            for i, j in chosen:
                pairs.append((cs[i], ms[cs[i]], ct[j], mt[ct[j]], by_names))
                visit(cs[i], ct[j])

    visit("", "")
    return sorted(pairs, key=lambda p: len(p[1]))


def _order_or_names(a: list[tuple], b: list[tuple]) -> list[tuple[int, int]]:
    """Pair two equally long lists of name tokens: k-th with k-th, unless the most-similar-first
    assignment by names beats it by NAME_WEIGHT * gain >= TIE and every pair it takes against
    order is each name's unique best match.

    The last condition keeps counters from different scopes apart: `1.conv1` (block 1, its
    first conv) shares the tokens conv and 1 with a flat stage's `conv1` (its second conv) as
    much as `0.conv1` does; such ties are no evidence against order."""
    by_order = [(k, k) for k in range(len(a))]
    if len(a) == 1:
        return by_order
    sim = [[name_similarity(x, y) for y in b] for x in a]
    cells = sorted(((sim[i][j], -i, -j) for i in range(len(a)) for j in range(len(b))), reverse=True)
    used_a, used_b, by_names = set(), set(), []
    for _, i, j in cells:
        if -i not in used_a and -j not in used_b:
            used_a.add(-i)
            used_b.add(-j)
            by_names.append((-i, -j))

    def score(pairs) -> float:
        return sum(sim[i][j] for i, j in pairs)

    def unique_best(i: int, j: int) -> bool:
        return _unique_best(sim, i, j)

    if (score(by_names) - score(by_order)) * NAME_WEIGHT < TIE:
        return by_order
    return sorted(by_names) if all(unique_best(i, j) for i, j in by_names if i != j) else by_order


def _unique_best(sim: list[list[float]], i: int, j: int) -> bool:
    return all(sim[i][k] < sim[i][j] for k in range(len(sim[i])) if k != j) and all(
        sim[k][j] < sim[i][j] for k in range(len(sim)) if k != i)


def names_decide(a: list[tuple], b: list[tuple], pairs: list[tuple[int, int]]) -> bool:
    """Do the names alone give these pairs: each pair is both names' unique best match?"""
    sim = [[name_similarity(x, y) for y in b] for x in a]
    return all(_unique_best(sim, i, j) for i, j in pairs)


def _placement(layers: list[Layer], module: frozenset, members: list[Layer]) -> list[int]:
    """For each member, how many of the module's other layers are registered before it."""
    others = sorted(i for i in module if i not in {m.index for m in members})
    return [sum(1 for i in others if i < m.index) for m in members]


def match_in_modules(S, T, pairs, decided, taken, anchor_s=None, anchor_t=None) -> dict[int, list[int]]:
    """Inside paired modules (innermost first), pair layers by signature: alone in its module ->
    decided; several of one signature -> by order within the module, or by names (relative to
    the module) when they clearly disagree with order. Several norms are paired only in a way
    the conv-norm adjacency (`anchors`) does not contradict: by names, else by order, else they
    are left to the sequence alignment. Several layer norms that the conv-norm adjacency does not
    place on both sides and that the two sides register in different places among the module's other layers (timm: norm1,
    attention, norm2, MLP; HF ViT: attention, layernorm_before, layernorm_after, MLP) pair only by
    names (before ~ 1, after ~ 2): registration order is no evidence there. When the names do not
    decide either, they are held: returned as source index -> candidate template indices, to be
    reported ambiguous, never paired."""
    anchor_s, anchor_t = anchor_s or {}, anchor_t or {}
    held: dict[int, list[int]] = {}
    for ps, a, pt, b, module_by_names in pairs:
        by_sig: dict[tuple, tuple[list[Layer], list[Layer]]] = {}
        held_t = {j for js in held.values() for j in js}
        for i in sorted(a):
            if i not in decided and i not in held:
                by_sig.setdefault(signature(S[i]), ([], []))[0].append(S[i])
        for j in sorted(b):
            if j not in taken and j not in held_t:
                by_sig.setdefault(signature(T[j]), ([], []))[1].append(T[j])
        # Norms last: their anchors (the convs of the module) must be decided first.
        for ss, tt in sorted(by_sig.values(), key=lambda st: (st[0] or st[1])[0].family == "norm"):
            if len(ss) != len(tt) or not ss:
                continue
            rel_s = [name_tokens(x.path[len(ps) + 1:]) for x in ss]
            rel_t = [name_tokens(x.path[len(pt) + 1:]) for x in tt]
            chosen = _order_or_names(rel_s, rel_t)
            named = len(ss) > 1 and names_decide(rel_s, rel_t, chosen)
            if (len(ss) > 1 and ss[0].kind == "layer_norm" and not named
                    and not (any(x.index in anchor_s for x in ss) and any(x.index in anchor_t for x in tt))
                    and _placement(S, a, ss) != _placement(T, b, tt)):
                for x in ss:
                    held[x.index] = sorted(y.index for y in tt)
                continue
            if len(ss) > 1 and ss[0].family == "norm":
                # Pre-activation blocks: one implementation may name its norms after the conv
                # they follow (Keras: `1_conv`, `1_bn`, then `2_conv`), the other after the conv
                # they feed (`bn1`, `conv1`), so equal names mean different layers. A pairing
                # that puts a norm registered right after conv X onto one registered right after
                # a conv that is not X's match is not taken; if order is contradicted as well,
                # the sequence alignment decides or reports them.
                by_order = [(k, k) for k in range(len(ss))]
                reverse = {v[0]: k for k, v in decided.items()}
                fits = [p for p in (chosen, by_order) if not any(
                    anchor_conflict(ss[i].index, tt[j].index, anchor_s, anchor_t, decided, reverse) for i, j in p)]
                if not fits:
                    continue
                chosen = fits[0]
            ev = "module + shape" if len(ss) == 1 else (
                "module + names" if chosen != [(k, k) for k in range(len(ss))] else
                "module + order + names" if named else "module + order")
            if module_by_names:
                ev = ev.replace("module", "module (by names)", 1)
            for i, j in chosen:
                sim = name_similarity(rel_s[i], rel_t[j])
                conf = 0.95 if len(ss) == 1 else 0.75 + 0.2 * sim
                decided[ss[i].index] = (tt[j].index, "", conf - (0.05 if module_by_names else 0.0), ev)
                taken.add(tt[j].index)
    return held


def anchors(layers: list[Layer]) -> dict[int, int]:
    """norm layer index -> the conv/linear registered right before it whose output it normalises
    (a layer norm after a linear layer excepted)."""
    out = {}
    for a, b in itertools.pairwise(layers):
        w = a.shapes.get("weight")
        channels = b.shapes.get("weight") or b.shapes.get("running_mean")
        if b.kind == "layer_norm" and w and len(w) == 2:
            # A transformer block registers its norms beside its linears in module order (HF ViT:
            # attention, then layernorm_before, which normalises the block's input, not the
            # attention's output): names and order say more than that adjacency.
            continue
        if a.family == "affine" and b.family == "norm" and w and channels and channels[:1] == w[:1]:
            out[b.index] = a.index
    return out


def anchor_conflict(si: int, ti: int, anchor_s: dict, anchor_t: dict, decided: dict, reverse: dict) -> bool:
    """True when source norm `si` and template norm `ti` are each registered right after a conv
    (their anchors) and those convs are known not to be each other's match: the source anchor
    is decided onto another layer, or the template anchor is taken by another source layer.
    `reverse` maps template index -> source index for the decided pairs."""
    ps, pt = anchor_s.get(si), anchor_t.get(ti)
    if ps is None or pt is None:
        return False
    return (ps in decided and decided[ps][0] != pt) or (pt in reverse and reverse[pt] != ps)


def align_rounds(group, S, T, decided, taken, ambiguous, involved, context, sig_count_s, sig_count_t, note) -> None:
    """Sequence-align one family's undecided layers, in rounds while a round settles anything."""
    for round_ in range(1, len(S) + 2):
        gs = [s for s in S if group_of(s) == group and s.index not in decided]
        gt = [t for t in T if group_of(t) == group and t.index not in taken]
        if not gs or not gt:
            return
        score, viable, chosen = _sequence_align(gs, gt, context)
        cand_s: dict[int, set[int]] = {}
        cand_t: dict[int, set[int]] = {}
        for i, j in viable:
            cand_s.setdefault(i, set()).add(j)
            cand_t.setdefault(j, set()).add(i)
        settled = set()
        for i, j in chosen:
            if cand_s.get(i) != {j} or cand_t.get(j) != {i}:
                continue
            s, t = gs[i], gt[j]
            op = score[i, j][1]
            sim = name_similarity(s.tokens, t.tokens)
            if sig_count_s[signature(s)] == 1 and sig_count_t[signature(t)] == 1:
                conf, ev = 0.9, "unique shape"
            elif round_ == 1:
                conf, ev = 0.7 + 0.3 * sim, "order + shape"
            else:
                conf, ev = 0.6 + 0.3 * sim, "order + shape (orders cross)"
            if note:
                conf, ev = conf - 0.2, ev + note
            decided[s.index] = (t.index, op, conf - (0.1 if op else 0.0), ev + (" + reshape" if op else ""))
            taken.add(t.index)
            settled.add(i)
        if not settled:
            for i, js in cand_s.items():
                ambiguous[gs[i].index] = sorted(gt[j].index for j in js)
                involved.update(gt[j].index for j in js)
            return


def _sequence_align(S: list[Layer], T: list[Layer], context=None):
    """Max-score order-preserving pairing of S and T; `context(s, t)` is a score bonus, or None
    to forbid the pair. Returns ({(i, j): (score, op)}, viable pairs, chosen pairs)."""
    n, m = len(S), len(T)
    score: dict[tuple[int, int], tuple[float, str]] = {}
    for i, s in enumerate(S):
        for j, t in enumerate(T):
            op = transform_between(s, t)
            bonus = context(s, t) if context and op is not None else 0.0
            if op is not None and bonus is not None:
                sc = MATCH + bonus + NAME_WEIGHT * name_similarity(s.tokens, t.tokens) + (0.5 if s.kind == t.kind else 0.0)
                score[i, j] = (sc - (0.5 if op else 0.0), op)
    F = _prefix_scores(score, n, m)
    B = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best = max(B[i + 1][j], B[i][j + 1])
            if (i, j) in score:
                best = max(best, B[i + 1][j + 1] + score[i, j][0])
            B[i][j] = best
    opt = F[n][m]
    viable = {(i, j) for (i, j), (sc, _) in score.items() if F[i][j] + sc + B[i + 1][j + 1] > opt - TIE + 1e-9}
    return score, viable, _best_path(F, score, n, m)


def _prefix_scores(score: dict, n: int, m: int) -> list[list[float]]:
    """F[i][j]: the best order-preserving pairing of the first i and first j layers, pair (i, j)
    worth score[i, j][0] where it is allowed."""
    F = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best = max(F[i - 1][j], F[i][j - 1])
            if (i - 1, j - 1) in score:
                best = max(best, F[i - 1][j - 1] + score[i - 1, j - 1][0])
            F[i][j] = best
    return F


def _best_path(F: list[list[float]], score: dict, n: int, m: int) -> list[tuple[int, int]]:
    """The pairs of one optimal pairing, traced back through F."""
    chosen = []
    i, j = n, m
    while i > 0 and j > 0:
        if (i - 1, j - 1) in score and abs(F[i][j] - (F[i - 1][j - 1] + score[i - 1, j - 1][0])) < 1e-9:
            chosen.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif F[i][j] == F[i - 1][j]:
            i -= 1
        else:
            j -= 1
    return chosen[::-1]


def relaxed_pairs(S: list[Layer], T: list[Layer]) -> list[tuple[int, int]]:
    """Order-preserving pairs of layers with the same roles (shapes may differ), for the mismatch table."""
    n, m = len(S), len(T)
    score = {(i, j): (1 + name_similarity(s.tokens, t.tokens), "") for i, s in enumerate(S) for j, t in enumerate(T)
             if s.required == t.required and s.family == t.family}
    return _best_path(_prefix_scores(score, n, m), score, n, m)
