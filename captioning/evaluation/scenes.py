"""What a caption of a synthetic scene gets right, judged against the scene itself (captioning.data.synthetic knows
every object's colour, shape, size and cell), not against its reference captions.

Reading a caption (cleaned words):
- an *object* is a colour word right before a shape word ("a small red circle", "the red circle"); a size word
  right before the colour is its size. A colour or shape word that is not part of such a pair is *stray*: it names
  nothing of the scene, and counts as one named object that is not there.
- a *relation* is each of the words left, right, above and below, between the nearest object named before it and the
  nearest named after it ("a red circle to the left of a blue square and a green star": red circle left of blue
  square). One that lacks an object on either side is *dangling*.
- the count (the word before "shapes") and the background (the word before "background"), when stated.

Judging it against the scene:
- objects, with multiplicity: two red circles are two. Matched = sum over (colour, shape) of min(named, in scene);
  object precision = matched / named (stray words included), recall = matched / the scene's objects; *exact* when
  the named objects are the scene's, each as often as it is there, and nothing is stray.
- a relation by the cells only: a is to the left of b when a's column is smaller, to the right when larger, above
  when a's row is smaller, below when larger; the other axis does not matter ("above" between cells of different
  columns is judged by the rows). The generator states left/right when the columns differ and above/below
  otherwise, so its references always hold.
  Objects of the same colour and shape: a relation is *right* when it holds for some choice of two different scene
  objects with the named colours and shapes ("a red circle is left of the blue square" is true when one of two red
  circles is), *wrong* when it holds for none. It is *unjudgeable* when a named object is not in the scene (or both
  name the one object of its kind there), or it is dangling: the object figures already count that caption wrong.
  Sizes do not pick among same-named objects; they are scored on their own.
- *fully right*: the objects are exact and no relation is wrong. *Every word right* adds: each size word is the size
  of a scene object of that colour and shape, and the count and background, when stated, are the scene's.

The colour-word figures of the earlier benchmark (benchmarks/scenes.py keeps them): a colour word is *in the scene*
when the scene has an object of that colour, *on its shape* when it is part of an object the scene has, each scene
object vouching for one mention.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

from captioning.data.synthetic import COLOURS, SHAPES, SceneObject

SIZES = {"small": "small", "little": "small", "large": "large", "big": "large"}
RELATIONS = ("left", "right", "above", "below")
COUNTS = {"one": 1, "two": 2, "three": 3, "four": 4}
# a stands to b as the word says, judged by the cells: (row, col) of a and of b
HOLDS = {"left": lambda a, b: a.col < b.col, "right": lambda a, b: a.col > b.col,
         "above": lambda a, b: a.row < b.row, "below": lambda a, b: a.row > b.row}


@dataclasses.dataclass(frozen=True)
class Mention:
    colour: str
    shape: str
    size: str | None  # small, large, or None when no size word comes before it

    @property
    def name(self) -> tuple[str, str]:
        return self.colour, self.shape


@dataclasses.dataclass
class Statement:
    """What a caption says about a scene."""

    objects: list[Mention]
    stray: list[str]  # colour and shape words that are part of no object
    relations: list[tuple[int, str, int]]  # (index into objects, relation word, index into objects)
    dangling: int  # relation words without an object named on one side
    count: int | None
    background: str | None


def read_caption(words: Sequence[str]) -> Statement:
    """The objects, relations, count and background a caption states (see the module docstring)."""
    objects, stray, marks = [], [], []  # marks: (relation word, objects named before it)
    count = background = None
    i = 0
    while i < len(words):
        word = words[i]
        if word in COLOURS and i + 1 < len(words) and words[i + 1] in SHAPES:
            objects.append(Mention(word, words[i + 1], SIZES.get(words[i - 1]) if i else None))
            i += 2
            continue
        if word in COLOURS or word in SHAPES:
            stray.append(word)
        elif word in RELATIONS:
            marks.append((word, len(objects)))
        elif word == "shapes" and i and words[i - 1] in COUNTS:
            count = COUNTS[words[i - 1]]
        elif word == "background" and i and words[i - 1] in ("light", "dark"):
            background = words[i - 1]
        i += 1
    relations = [(before - 1, word, before) for word, before in marks if 0 < before < len(objects)]
    return Statement(objects, stray, relations, len(marks) - len(relations), count, background)


@dataclasses.dataclass
class Judgement:
    """One caption against its scene."""

    named: int  # objects named, stray words included
    matched: int  # of them, objects of the scene (with multiplicity)
    in_scene: int  # the scene's objects
    exact: bool
    relations: list[str]  # per stated relation, dangling ones included: right, wrong or unjudgeable
    chosen: int  # relations judged by a choice among same-named objects
    sizes: tuple[int, int]  # (size words right, size words of objects in the scene)
    count_right: bool | None  # None: not stated
    background_right: bool | None
    colour_words: list[tuple[str, bool]]  # each colour word and whether the scene has that colour
    colour_on_shape: int  # colour words that are part of an object the scene has (each scene object once)

    @property
    def fully_right(self) -> bool:
        return self.exact and "wrong" not in self.relations

    @property
    def every_word_right(self) -> bool:
        return (self.fully_right and self.sizes[0] == self.sizes[1]
                and self.count_right is not False and self.background_right is not False)


def _relation_verdict(a: Mention, word: str, b: Mention, objects: Sequence[SceneObject]) -> tuple[str, bool]:
    """right, wrong or unjudgeable, and whether it took a choice among same-named objects."""
    pairs = [(x, y) for x in objects if x.name == a.name for y in objects if y.name == b.name and y is not x]
    if not pairs:
        return "unjudgeable", False
    return ("right" if any(HOLDS[word](x, y) for x, y in pairs) else "wrong"), len(pairs) > 1


def judge(words: Sequence[str], objects: Sequence[SceneObject], background: str) -> Judgement:
    """A caption's words against the scene's objects and background."""
    said = read_caption(words)
    truth = collections.Counter(o.name for o in objects)
    named = collections.Counter(m.name for m in said.objects)
    matched = sum(min(n, truth[name]) for name, n in named.items())
    verdicts, chosen = [], 0
    for i, word, j in said.relations:
        verdict, choice = _relation_verdict(said.objects[i], word, said.objects[j], objects)
        verdicts.append(verdict)
        chosen += choice
    verdicts += ["unjudgeable"] * said.dangling
    sized = [m for m in said.objects if m.size is not None and m.name in truth]
    sizes_right = sum(any(o.name == m.name and o.size == m.size for o in objects) for m in sized)
    colours = {o.colour for o in objects}
    colour_words = [m.colour for m in said.objects] + [w for w in said.stray if w in COLOURS]
    return Judgement(
        named=len(said.objects) + len(said.stray), matched=matched, in_scene=len(objects),
        exact=named == truth and not said.stray, relations=verdicts, chosen=chosen,
        sizes=(sizes_right, len(sized)),
        count_right=None if said.count is None else said.count == len(objects),
        background_right=None if said.background is None else said.background == background,
        colour_words=[(c, c in colours) for c in colour_words], colour_on_shape=matched)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def scene_scores(judgements: Sequence[Judgement]) -> dict:
    """The figures over a set of captions, one per scene: shares of captions, of objects and of relations."""
    n = len(judgements)
    named, matched, in_scene = (sum(getattr(j, k) for j in judgements) for k in ("named", "matched", "in_scene"))
    verdicts = collections.Counter(v for j in judgements for v in j.relations)
    judged = verdicts["right"] + verdicts["wrong"]
    sizes = [sum(j.sizes[k] for j in judgements) for k in (0, 1)]
    counts = [j.count_right for j in judgements if j.count_right is not None]
    backgrounds = [j.background_right for j in judgements if j.background_right is not None]
    by_objects = collections.defaultdict(list)
    for j in judgements:
        by_objects[j.in_scene].append(j.fully_right)
    colour_words = [c for j in judgements for c in j.colour_words]
    per_colour = {colour: [sum(ok for c, ok in colour_words if c == colour), sum(c == colour for c, _ in colour_words)]
                  for colour in COLOURS}
    return {
        "captions": n,
        "fully_right": _share(sum(j.fully_right for j in judgements), n),
        "every_word_right": _share(sum(j.every_word_right for j in judgements), n),
        "objects_exact": _share(sum(j.exact for j in judgements), n),
        "object_precision": _share(matched, named), "object_recall": _share(matched, in_scene),
        "objects_named": named, "objects_in_scenes": in_scene,
        "relations_stated": sum(verdicts.values()), "relations_right": verdicts["right"],
        "relations_wrong": verdicts["wrong"], "relations_unjudgeable": verdicts["unjudgeable"],
        "relations_right_of_judged": _share(verdicts["right"], judged),
        "relations_by_choice": sum(j.chosen for j in judgements),
        "captions_with_wrong_relation": _share(sum("wrong" in j.relations for j in judgements), n),
        "size_words_right": _share(sizes[0], sizes[1]), "size_words": sizes[1],
        "count_right": _share(sum(counts), len(counts)), "counts_stated": len(counts),
        "background_right": _share(sum(backgrounds), len(backgrounds)), "backgrounds_stated": len(backgrounds),
        "fully_right_by_object_count": {str(k): _share(sum(v), len(v)) for k, v in sorted(by_objects.items())},
        "colour_words": len(colour_words),
        "colour_in_scene": _share(sum(ok for _, ok in colour_words), len(colour_words)),
        "colour_on_shape": _share(sum(j.colour_on_shape for j in judgements), len(colour_words)),
        "per_colour": per_colour,
    }
