"""A registered attention captioner's maps on the first test images, as heat maps only (no photo, so a figure made
from a dataset whose images may not be redistributed holds none of them).

    python reports/attention_maps.py --data ../shared/flickr8k --out docs/flickr8k-attention.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

from captioning.core.tracking import resolve_tracking_uri
from captioning.data.dataset import DataError, load_dataset
from captioning.serving.load import load_captioner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder with a test split")
    parser.add_argument("--model", default="models:/captioner@champion")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--tracking-uri", metavar="URI", help="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")
    args = parser.parse_args(argv)
    resolve_tracking_uri(args.tracking_uri)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        dataset = load_dataset(Path(args.data))
    except DataError as exc:
        parser.exit(2, f"attention_maps: {exc}\n")
    captioner = load_captioner(args.model)
    if not captioner.has_attention:
        parser.exit(2, f"attention_maps: {args.model} is a merge decoder, which has no attention maps\n")
    rows = []
    for name in dataset.split("test")[: args.images]:
        caption, maps = captioner.caption_with_attention(dataset.images[name])
        rows.append((caption.split(), maps))
    columns = max(len(words) for words, _ in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.45 * columns, 1.75 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (words, maps) in enumerate(rows):
        for column, (word, weights) in enumerate(zip(words, maps)):
            axes[row, column].imshow(weights, cmap="magma", vmin=0, vmax=maps.max())
            axes[row, column].set_title(word, fontsize=9)
        axes[row, 0].text(-0.15, 0.5, f"test {row + 1}", transform=axes[row, 0].transAxes, ha="right", va="center",
                          fontsize=8)
    side = maps.shape[1]
    figure.suptitle(f"{args.model}: attention over the {side} x {side} feature grid per word "
                    f"(beam {captioner.config.beam_width}, first {len(rows)} test images)", fontsize=10)
    figure.tight_layout()
    figure.savefig(args.out, dpi=90)
    print(f"attention_maps: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
