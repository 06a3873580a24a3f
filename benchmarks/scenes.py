"""What a captioner gets right about the embedded test scenes: objects, relations, and captions fully right.

    python benchmarks/scenes.py --model models:/captioner@champion
    python benchmarks/scenes.py --model outputs/captioner-20261207-101500 --split dev --out /tmp/probe.json
    python benchmarks/scenes.py --model outputs/captioner-20261207-101500 --split dev --beam 5 --length-penalty 1

Captions the 250 test scenes from their image files (the captioning path: load, encode, decode with the beam width and
length penalty of the model's config, or of --beam and --length-penalty) and judges each caption against the scene as
the generator made it (captioning.data.synthetic: every object's colour, shape, size and cell), with the rules of
captioning.evaluation.scenes:

- object precision and recall: the colour-shape pairs the captions name against the scenes' objects, with
  multiplicity (two red circles are two); objects exact: the captions that name exactly the scene's objects.
- relations: each left / right / above / below between two named objects, right when it holds for the objects'
  cells, wrong when it does not, unjudgeable when a named object is not in the scene.
- fully right: objects exact and no wrong relation; every word right: also the size, count and background words.
- colour words (the figures of the former benchmarks/colour_words.py): in the scene, and on their shape.

Before any captioning, every test scene is generated again from its index and --seed and its captions compared with
the dataset's, so the truth is the dataset's own. The references are scored the same way (one figure per reference
template) as a check of the rules. Also written to benchmarks/results/: test BLEU-1..4 (NLTK) and sample captions,
the first --samples and the first --samples not fully right.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from captioning.data.synthetic import generate_scene, scene_index
from captioning.data.text import clean_caption
from captioning.evaluation.scenes import judge, scene_scores
from captioning.metrics.bleu import corpus_bleu_scores

TEMPLATES = ("relation, sizes", "inverse relation, sizes", "listing", "relation of two", "there is")


class SceneMismatch(ValueError):
    """A dataset whose scenes are not the generator's for the given seed."""


def dataset_scenes(dataset, names: list[str], seed: int) -> list:
    """The generator's scenes for `names`, checked against the dataset's captions."""
    scenes = []
    for name in names:
        scene = generate_scene(scene_index(name), seed)
        if [clean_caption(c) for c in scene.captions] != dataset.captions[name]:
            raise SceneMismatch(f"{dataset.root}: the captions of {name} are not those the generator writes for "
                                f"scene {scene_index(name)} with seed {seed}; give the seed the dataset was written "
                                "with (--seed)")
        scenes.append(scene)
    return scenes


def reference_scores(scenes: list) -> dict[str, dict]:
    """Fully right and relations of each reference template, over the scenes: a check of the rules."""
    out = {}
    for k, template in enumerate(TEMPLATES):
        scores = scene_scores([judge(clean_caption(s.captions[k]), s.objects, s.background) for s in scenes])
        out[template] = {key: scores[key] for key in ("fully_right", "objects_exact", "object_precision",
                                                      "relations_right", "relations_wrong", "relations_unjudgeable")}
    return out


def _sample(name: str, words: list[str], scene, judgement) -> dict:
    return {"image": name, "caption": " ".join(words), "fully_right": judgement.fully_right,
            "relations": judgement.relations,
            "scene": [f"{o.size} {o.colour} {o.shape} at row {o.row}, column {o.col}" for o in scene.objects],
            "listing_reference": scene.captions[2]}


def score_captioner(captioner, dataset, seed: int, samples: int = 8, split: str = "test") -> dict:
    """Caption a split's images and judge every caption against its scene."""
    names = dataset.split(split)
    scenes = dataset_scenes(dataset, names, seed)
    start = time.perf_counter()
    captions = [c.split() for c in captioner.caption([dataset.images[n] for n in names])]
    seconds = time.perf_counter() - start
    judgements = [judge(words, scene.objects, scene.background) for words, scene in zip(captions, scenes)]
    references = [dataset.captions[n] for n in names]
    rows = list(zip(names, captions, scenes, judgements))
    return {"split": split, "images": len(names), "beam_width": captioner.config.beam_width,
            "length_penalty": captioner.config.length_penalty,
            "encoder": {k: captioner.config.to_dict()[k] for k in
                        ("encoder", "image_size", "feature_grid", "colour_grid")},
            "decoder": captioner.config.decoder,
            **scene_scores(judgements),
            **{f"{split}_{k}": v for k, v in corpus_bleu_scores(references, captions).items()},
            "caption_seconds": seconds,
            "references": reference_scores(scenes),
            "samples": [_sample(*row) for row in rows[:samples]],
            "wrong_samples": [_sample(*row) for row in rows if not row[3].fully_right][:samples]}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def report(result: dict) -> list[str]:
    r, split = result, result["split"]
    return [
        f"{r['images']} {r['split']} scenes, {r['decoder']} decoder, beam-{r['beam_width']} (length penalty "
        f"{r['length_penalty']:g}): fully right "
        f"{_percent(r['fully_right'])} (2 shapes {_percent(r['fully_right_by_object_count'].get('2'))}, 3 shapes "
        f"{_percent(r['fully_right_by_object_count'].get('3'))}); every word right {_percent(r['every_word_right'])}",
        f"objects: exact {_percent(r['objects_exact'])}, precision {r['object_precision']:.3f}, recall "
        f"{r['object_recall']:.3f} ({r['objects_named']} named, {r['objects_in_scenes']} in the scenes)",
        f"relations: {r['relations_stated']} stated, {r['relations_right']} right, {r['relations_wrong']} wrong, "
        f"{r['relations_unjudgeable']} unjudgeable: {_percent(r['relations_right_of_judged'])} of the judged right",
        f"sizes right {_percent(r['size_words_right'])}, counts {_percent(r['count_right'])}, backgrounds "
        f"{_percent(r['background_right'])}; colour words ({r['colour_words']}): in the scene "
        f"{_percent(r['colour_in_scene'])}, on their shape {_percent(r['colour_on_shape'])}",
        "references fully right: " + ", ".join(f"{t} {_percent(v['fully_right'])}"
                                               for t, v in r["references"].items()),
        f"{split} BLEU-1..4: " + " ".join(f"{r[f'{split}_bleu{n}']:.3f}" for n in range(1, 5)),
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="captioner bundle directory or MLflow model URI "
                        "(models:/captioner@champion, runs:/ID/model)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for a models:/ or runs:/ URI "
                        "(default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--data", help="a dataset folder written by captioning.data.synthetic (default: the embedded "
                        "one)")
    parser.add_argument("--seed", type=int, default=0, help="the seed --data was written with (default: 0, the "
                        "embedded dataset's)")
    parser.add_argument("--split", choices=("test", "dev"), default="test", help="the scenes to caption (dev: "
                        "for choosing; default: test)")
    parser.add_argument("--beam", type=int, help="beam width (1: greedy; default: the model's own)")
    parser.add_argument("--length-penalty", type=float, help="the beam's length penalty (default: the model's own)")
    parser.add_argument("--samples", type=int, default=8, help="sample captions to print and keep")
    parser.add_argument("--out", default="scenes.json", help="file name under benchmarks/results/ (or a path)")
    args = parser.parse_args(argv)

    from captioning.core.tracking import resolve_tracking_uri
    from captioning.data.dataset import load_dataset
    from captioning.data.synthetic import embedded_dataset
    from captioning.serving.load import load_captioner

    if args.tracking_uri or args.model.startswith(("models:/", "runs:/")):
        resolve_tracking_uri(args.tracking_uri)
    captioner = load_captioner(args.model)
    for key, value in (("beam_width", args.beam), ("length_penalty", args.length_penalty)):
        if value is not None:
            captioner.config = captioner.config.replace(**{key: value})
    dataset = load_dataset(Path(args.data) if args.data else embedded_dataset(), seed=captioner.config.seed)
    try:
        result = {"model": args.model, **score_captioner(captioner, dataset, args.seed, args.samples,
                                                            args.split)}
    except SceneMismatch as exc:
        raise SystemExit(f"error: {exc}") from None
    print("\n".join(report(result)))
    for sample in result["samples"]:
        print(f"  {sample['image']} ({'right' if sample['fully_right'] else 'wrong'}): {sample['caption']}\n"
              f"    scene: {'; '.join(sample['scene'])}")
    out = Path(__file__).parent / "results" / args.out
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
