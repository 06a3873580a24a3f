"""Colour words on the embedded test scenes: how many of the colours a captioner names are right.

    python benchmarks/colour_words.py --model models:/captioner@champion
    python benchmarks/colour_words.py --model outputs/captioner-20261127-101500 --out colour_words_probe.json

Captions the 250 test scenes from their image files (the captioning path: load, encode, decode with the beam width
of the model's config) and scores every colour word (red, green, blue, yellow, purple, orange) in them:

- in scene: the scene has an object of that colour.
- on its shape: the colour word and the word after it (every caption template puts the colour right before the
  shape: "a small red circle", "the red circle") name an object of the scene, and each object vouches for one
  mention only, so "the green triangle is to the left of the green triangle" about one green triangle and a blue
  circle has one of its two colour words right.

The truth is read from the scene's references: the listing reference ("two shapes on a light background : a red
circle and a blue square") names every object's colour and shape, duplicates included. The script checks that on
every test scene (it names as many objects as its count word says, and every object another reference names is
among them), so "a colour is in the scene" is exactly "some reference names it".

Also printed and written to benchmarks/results/: test BLEU-1..4 (NLTK, every reference) and sample captions.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

from captioning.data.synthetic import COLOURS, SHAPES
from captioning.metrics.bleu import corpus_bleu_scores

COUNT_WORDS = {"two": 2, "three": 3}


def named_objects(words: list[str]) -> list[tuple[str, str | None]]:
    """Each colour word with the word after it when that is a shape word (else None), in caption order."""
    return [(word, words[i + 1] if i + 1 < len(words) and words[i + 1] in SHAPES else None)
            for i, word in enumerate(words) if word in COLOURS]


def scene_objects(references: list[list[str]]) -> collections.Counter:
    """(colour, shape) -> how many the scene has, from the listing reference; checked against the others."""
    listing = [ref for ref in references if "shapes" in ref and ref[0] in COUNT_WORDS]
    if len(listing) != 1:
        raise ValueError(f"expected one listing reference ('two shapes on a ... background : ...'), got {references}")
    objects = collections.Counter(named_objects(listing[0]))
    if None in {shape for _, shape in objects} or sum(objects.values()) != COUNT_WORDS[listing[0][0]]:
        raise ValueError(f"the listing reference does not name each object's colour and shape: {listing[0]}")
    for ref in references:
        if not collections.Counter(named_objects(ref)) <= objects:
            raise ValueError(f"a reference names an object the listing does not: {ref} vs {listing[0]}")
    return objects


def colour_word_scores(captions: list[list[str]], references: list[list[list[str]]]) -> dict[str, float]:
    """Shares of the captions' colour words that are right (see the module docstring), and counts; per colour word:
    [in the scene, said]."""
    words = in_scene = on_shape = 0
    per_colour = {colour: [0, 0] for colour in COLOURS}
    for caption, refs in zip(captions, references):
        truth = scene_objects(refs)
        colours = collections.Counter()
        for (colour, shape), n in truth.items():
            colours[colour] += n
        mentioned = named_objects(caption)
        words += len(mentioned)
        in_scene += sum(colour in colours for colour, _ in mentioned)
        for colour, _ in mentioned:
            per_colour[colour][0] += colour in colours
            per_colour[colour][1] += 1
        pairs = collections.Counter(m for m in mentioned if m[1] is not None)
        on_shape += sum(min(n, truth[pair]) for pair, n in pairs.items())
    return {"colour_words": words, "colour_in_scene": in_scene / max(words, 1),
            "colour_on_shape": on_shape / max(words, 1), "per_colour": per_colour}


def _listing(raw_captions: list[str]) -> str:
    return next((c.strip() for c in raw_captions if " shapes on a " in c), raw_captions[0].strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="captioner bundle directory or MLflow model URI "
                        "(models:/captioner@champion, runs:/ID/model)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for a models:/ or runs:/ URI "
                        "(default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--data", help="a dataset folder written by captioning.data.synthetic (default: the embedded "
                        "one)")
    parser.add_argument("--samples", type=int, default=8, help="sample captions to print")
    parser.add_argument("--out", default="colour_words.json", help="file name under benchmarks/results/")
    args = parser.parse_args()

    from captioning.core.tracking import resolve_tracking_uri
    from captioning.data.dataset import load_dataset
    from captioning.data.synthetic import embedded_dataset
    from captioning.serving.load import load_captioner

    if args.tracking_uri or args.model.startswith(("models:/", "runs:/")):
        resolve_tracking_uri(args.tracking_uri)
    captioner = load_captioner(args.model)
    dataset = load_dataset(Path(args.data) if args.data else embedded_dataset(), seed=captioner.config.seed)
    names = dataset.split("test")
    start = time.perf_counter()
    captions = [c.split() for c in captioner.caption([dataset.images[n] for n in names])]
    seconds = time.perf_counter() - start
    references = [dataset.captions[n] for n in names]

    result = {"model": args.model, "images": len(names), "beam_width": captioner.config.beam_width,
              "encoder": {k: captioner.config.to_dict()[k] for k in
                          ("encoder", "image_size", "feature_grid", "colour_grid")},
              **colour_word_scores(captions, references),
              **{f"test_{k}": v for k, v in corpus_bleu_scores(references, captions).items()},
              "caption_seconds": seconds,
              "samples": [{"image": n, "caption": " ".join(c), "reference": _listing(dataset.raw_captions[n])}
                          for n, c in zip(names[:args.samples], captions)]}
    print(f"{result['colour_words']} colour words in {len(names)} test captions (beam-{result['beam_width']}): "
          f"{result['colour_in_scene']:.1%} in the scene, {result['colour_on_shape']:.1%} on the right shape")
    print("in the scene, by colour word: " + ", ".join(f"{c} {right}/{said}" for c, (right, said) in
                                                         result["per_colour"].items()))
    print("test BLEU-1..4: " + " ".join(f"{result[f'test_bleu{n}']:.3f}" for n in range(1, 5)))
    for sample in result["samples"]:
        print(f"  {sample['image']}: {sample['caption']}\n    listing reference: {sample['reference']}")
    out = Path(__file__).parent / "results" / args.out
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
