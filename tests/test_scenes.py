"""Scenes judged against themselves: the generator's objects and positions (captioning.data.synthetic), the scorer of
captions (captioning.evaluation.scenes) on hand-built captions and on the references, and benchmarks/scenes.py."""
import hashlib
import io
import json
from pathlib import Path

import pytest

from benchmarks import scenes as benchmark
from captioning.data.synthetic import SceneObject, generate_scene, make_scene, scene_index
from captioning.data.text import clean_caption
from captioning.evaluation.scenes import judge, read_caption, scene_scores

BUNDLE = Path(__file__).resolve().parent / "fixtures" / "legacy" / "bundle"

# What the generator wrote before it returned the scenes' objects (VERSION 1, the dataset's cache key): sha256 of the
# raw pixels, of the JPEG that write_dataset saves, and of the five captions joined by newlines.
DIGESTS = {
    (0, 0): ("18130d07637a1aea7cdc6dbe50407a8139d41717dfa5ef99cf6ca80697ef66f8",
             "3246fd63fd31a8d2a2ed4ce3a1a31165ec45d1a7a5acd13802f0f491cec82ba5",
             "fc554c21f6c38cce3a06d4e56d60231f429e6e3f2c96a0ac4eeeab613360602c"),
    (0, 1750): ("cd03386e33be91baf198ea46023318bd506d2b6bb35c99b06371a3307f057f48",
                "3b85a0721ee9a586e3c5ba7c200e5455094b395777b8e1d7f09dbcc75b551bb5",
                "88cf00a65be4efc35d552b8fd52ef95e0c6d5a86beef937e5e1e984edcb59baa"),
    (0, 1999): ("f3a62697a504a06aaedd1fb8f7398d33b27095dfd2e2ccde7ff2173098e164e0",
                "2096ecc36215ebfc5c3d8c427721d94fe5c3d20b0c0fc084941f677de10d4173",
                "76daf3f14a975f2374ac9540cb35791b6bb4c705a9b5cd75b82a306f759cadf1"),
    (3, 4): ("c139a2079fcf003c6c9a917a0e8a29ce2ae4c93b4d55bbc073c53e1c69e62e5e",
             "f714b514c3afc483e8bb17d1663849f3a6857488ee48a6a27994fd5eb71500ec",
             "aed0abebda40b38066b4e03b8e791a7d17a726961895da17462efa6443825e29"),
}
TEST_SCENES = range(1750, 2000)  # the embedded dataset's test split: the last 250 of 2,000 scenes, seed 0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("seed, index", sorted(DIGESTS))
def test_the_generator_still_writes_the_same_images_and_captions(seed, index):
    image, captions = make_scene(index, seed)
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=92)  # as write_dataset saves it
    assert (sha(image.tobytes()), sha(jpeg.getvalue()), sha("\n".join(captions).encode())) == DIGESTS[seed, index]
    scene = generate_scene(index, seed)
    assert scene.image.tobytes() == image.tobytes() and scene.captions == captions


def test_a_scene_knows_its_objects_and_cells():
    scene = generate_scene(1750, 0)  # the README's scene: a yellow triangle, a red circle and a small blue circle
    assert scene.objects == (SceneObject("yellow", "triangle", "large", 2, 0), SceneObject("red", "circle", "large", 2, 1),
                             SceneObject("blue", "circle", "small", 2, 2))
    assert scene.background == "light"
    assert scene.captions[2] == "three shapes on a light background : a yellow triangle and a red circle and a blue circle"
    assert scene_index("scene_01750.jpg") == 1750
    with pytest.raises(ValueError, match="not a scene"):
        scene_index("photo.jpg")


def scene_of(*objects, background="light"):
    return [SceneObject(*o) for o in objects], background


# A red circle top left, a blue square in the middle, a red circle at the bottom right.
TWO_RED = scene_of(("red", "circle", "small", 0, 0), ("blue", "square", "large", 1, 1), ("red", "circle", "large", 2, 2))
# A green star at the bottom left, a yellow triangle top right: left of it and below it.
PAIR = scene_of(("green", "star", "small", 2, 0), ("yellow", "triangle", "large", 0, 2), background="dark")


def judged(caption, scene):
    return judge(caption.split(), *scene)


def test_reading_a_caption_finds_objects_relations_count_and_background():
    said = read_caption("two shapes on a dark background a big green star is to the left of the yellow triangle".split())
    assert [(m.colour, m.shape, m.size) for m in said.objects] == [("green", "star", "large"),
                                                                   ("yellow", "triangle", None)]
    assert said.relations == [(0, "left", 1)] and said.dangling == 0 and not said.stray
    assert (said.count, said.background) == (2, "dark")
    said = read_caption("a red circle to the left of and a blue".split())
    assert said.relations == [] and said.dangling == 1 and said.stray == ["blue"]


def test_a_right_caption_is_fully_right():
    j = judged("a small green star to the left of a big yellow triangle", PAIR)
    assert j.exact and j.relations == ["right"] and j.fully_right and j.every_word_right
    assert judged("a green star below a yellow triangle", PAIR).fully_right  # another axis, also true
    assert judged("two shapes on a dark background a green star and a yellow triangle", PAIR).every_word_right


def test_a_wrong_object_or_a_missing_one_is_not():
    wrong = judged("a green star to the left of a blue triangle", PAIR)
    assert not wrong.exact and not wrong.fully_right and (wrong.named, wrong.matched) == (2, 1)
    assert wrong.relations == ["unjudgeable"]  # the blue triangle is not there: the objects already count it wrong
    missing = judged("a red circle to the left of a blue square", TWO_RED)
    assert (missing.named, missing.matched, missing.in_scene) == (2, 2, 3) and not missing.fully_right
    stray = judged("a green star and a yellow triangle and a red", PAIR)
    assert (stray.named, stray.matched) == (3, 2) and not stray.exact


def test_a_wrong_relation_is_not_fully_right_and_above_is_judged_by_rows_only():
    j = judged("a green star to the right of a yellow triangle", PAIR)
    assert j.exact and j.relations == ["wrong"] and not j.fully_right
    assert judged("a green star above a yellow triangle", PAIR).relations == ["wrong"]
    # different columns and rows: "above" holds by the rows alone, whatever the columns
    assert judged("a yellow triangle above a green star", PAIR).relations == ["right"]
    same_row = scene_of(("red", "circle", "small", 1, 0), ("blue", "square", "small", 1, 2))
    assert judged("a red circle above a blue square", same_row).relations == ["wrong"]


def test_duplicates_count_with_multiplicity_and_relations_choose_among_them():
    both = judged("a red circle above a blue square and a red circle", TWO_RED)
    assert both.exact and both.relations == ["right"] and both.chosen == 1 and both.fully_right
    # two same-named objects: the relation needs two different ones, and holds for the bottom-right one
    assert judged("a red circle below a red circle and a blue square", TWO_RED).relations == ["right"]
    assert judged("a blue square to the left of a red circle and a red circle", TWO_RED).relations == ["right"]
    nowhere = scene_of(("red", "circle", "small", 0, 0), ("red", "circle", "small", 0, 2), ("blue", "square", "small", 2, 1))
    assert judged("a red circle below a blue square and a red circle", nowhere).relations == ["wrong"]
    once = judged("the green star is to the left of the green star", PAIR)
    assert not once.exact and once.relations == ["unjudgeable"] and (once.named, once.matched) == (2, 1)
    assert not judged("a red circle and a blue square", TWO_RED).exact  # one red circle short


def test_sizes_counts_and_backgrounds_decide_every_word_right_only():
    j = judged("three shapes on a light background a big green star to the left of a small yellow triangle", PAIR)
    assert j.fully_right and not j.every_word_right
    assert (j.sizes, j.count_right, j.background_right) == ((0, 2), False, False)


def test_scores_add_up_over_captions():
    scores = scene_scores([judged("a small green star to the left of a big yellow triangle", PAIR),
                           judged("a green star to the right of a yellow triangle", PAIR),
                           judged("a red circle above a blue square", TWO_RED)])
    assert scores["fully_right"] == pytest.approx(1 / 3) and scores["objects_exact"] == pytest.approx(2 / 3)
    assert (scores["objects_named"], scores["objects_in_scenes"]) == (6, 7)
    assert scores["object_precision"] == 1.0 and scores["object_recall"] == pytest.approx(6 / 7)
    assert (scores["relations_right"], scores["relations_wrong"], scores["relations_unjudgeable"]) == (2, 1, 0)
    assert scores["fully_right_by_object_count"] == {"2": 0.5, "3": 0.0}
    assert scores["colour_in_scene"] == 1.0 and scores["per_colour"]["green"] == [2, 2]


def test_the_references_of_every_test_scene_are_right():
    """Four templates describe the whole scene and are fully right on all 250; the fourth ("the red circle is to the
    left of the blue square") names the first two objects only, so it is fully right on the two-shape scenes alone,
    and names nothing that is not there."""
    scenes = [generate_scene(index, 0) for index in TEST_SCENES]
    for k in range(5):
        scores = scene_scores([judge(clean_caption(s.captions[k]), s.objects, s.background) for s in scenes])
        assert scores["relations_wrong"] == scores["relations_unjudgeable"] == 0 and scores["object_precision"] == 1.0
        assert scores["size_words_right"] in (None, 1.0) and scores["count_right"] in (None, 1.0)
        if k == 3:
            assert scores["fully_right_by_object_count"]["2"] == 1.0 and scores["fully_right_by_object_count"]["3"] == 0
        else:
            assert scores["fully_right"] == scores["every_word_right"] == 1.0


def test_the_benchmark_scores_a_captioner_and_refuses_another_seeds_dataset(shapes_dir, tmp_path, capsys):
    out = tmp_path / "scenes.json"
    benchmark.main(["--model", str(BUNDLE), "--data", str(shapes_dir), "--seed", "1", "--samples", "2",
                    "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["images"] == 20 and result["captions"] == 20 and len(result["samples"]) == 2
    assert 0 <= result["fully_right"] <= 1 and result["objects_named"] > 0 and "test_bleu4" in result
    assert result["references"]["listing"]["fully_right"] == 1.0
    assert "fully right" in capsys.readouterr().out
    # the decoding given on the command line, not the model's
    benchmark.main(["--model", str(BUNDLE), "--data", str(shapes_dir), "--seed", "1", "--beam", "1",
                    "--length-penalty", "2", "--out", str(out)])
    greedy = json.loads(out.read_text())
    assert (greedy["beam_width"], greedy["length_penalty"]) == (1, 2.0)
    assert "beam-1 (length penalty 2): fully right" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="with seed 0; give the seed the dataset was written with"):
        benchmark.main(["--model", str(BUNDLE), "--data", str(shapes_dir), "--out", str(out)])
