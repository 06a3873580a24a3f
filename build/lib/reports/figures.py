"""The report's figures, drawn with seaborn; each returns a matplotlib Figure (or None when it has nothing to show).

Every figure colours by study when several studies are compared, so that two searches sit side by side.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reports.collect import Selection  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def bleu_of_top(selection: Selection, top: int) -> plt.Figure:
    """BLEU-1..4 on dev and test of the best trials, side by side."""
    best = selection.top(top)
    rows = [{"trial": r.label, "split": split, "BLEU": f"BLEU-{n}", "score": getattr(r, f"{split}_bleu{n}")}
            for r in best.itertuples() for split in ("dev", "test") for n in range(1, 5)]
    data = pd.DataFrame(rows).dropna()
    grid = sns.catplot(data=data, kind="bar", x="BLEU", y="score", hue="trial", col="split", height=3.6, aspect=1.3,
                       palette="viridis")
    grid.set_titles("{col_name} split")
    grid.figure.suptitle(f"BLEU-1..4 of the top trials (ranked by {selection.metric})", y=1.03)
    return grid.figure


def learning_curves(selection: Selection, top: int) -> plt.Figure | None:
    """Dev loss, dev BLEU-4 and dev CIDEr-D per epoch of the best trials."""
    labels = list(selection.top(top).label)
    data = selection.curves[selection.curves.label.isin(labels) & (selection.curves.measure != "train loss")]
    if data.empty:
        return None
    multi = selection.trials.study.nunique() > 1
    grid = sns.relplot(data=data, kind="line", x="epoch", y="value", hue="label", hue_order=labels, col="measure",
                       style="study" if multi else None, marker="o", height=3.6, aspect=1.3,
                       facet_kws={"sharey": False})
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid.figure.suptitle("Learning curves of the top trials", y=1.03)
    return grid.figure


def metric_by_parameter(selection: Selection) -> plt.Figure | None:
    """The selection metric against each hyperparameter that varies, every completed trial one point."""
    params = selection.params
    if not params:
        return None
    data = selection.complete()
    columns = min(3, len(params))
    rows = math.ceil(len(params) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    hue = "study" if data.study.nunique() > 1 else None
    for ax, param in zip(axes.flat, params):
        values = data[param]
        continuous = pd.api.types.is_float_dtype(values) or (pd.api.types.is_numeric_dtype(values)
                                                               and values.nunique() > 4)
        if continuous:
            sns.scatterplot(data=data, x=param, y=selection.metric, hue=hue, ax=ax, s=50, legend=ax is axes.flat[0])
            if values.min() > 0 and values.max() / values.min() > 20:
                ax.set_xscale("log")
        else:
            sns.stripplot(data=data, x=param, y=selection.metric, hue=hue, ax=ax, size=7, jitter=0.15,
                          legend=ax is axes.flat[0], order=sorted(values.unique(), key=str))
        ax.set_title(param)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    figure.suptitle(f"{selection.metric} against each hyperparameter", y=1.0)
    figure.tight_layout()
    return figure


def optimisation_history(selection: Selection) -> plt.Figure:
    """Each completed trial's metric and the best so far, against the trial number."""
    figure, ax = plt.subplots(figsize=(7.5, 3.8))
    floor = selection.complete()[selection.metric].min()  # where pruned and failed trials are drawn
    palette = sns.color_palette("deep", selection.trials.study.nunique())
    for colour, (study, trials) in zip(palette, selection.trials.groupby("study", sort=False)):
        trials = trials.sort_values("trial")
        done = trials[(trials.state == "complete") & trials[selection.metric].notna()]
        ax.scatter(done.trial, done[selection.metric], color=colour, alpha=0.6, label=f"{study}: trial")
        best = trials[selection.metric].where(trials.state == "complete").cummax().ffill()
        ax.step(trials.trial, best, where="post", color=colour, linewidth=2, label=f"{study}: best so far")
        stopped = trials[trials.state.isin(["pruned", "failed"])]
        if len(stopped):
            ax.scatter(stopped.trial, np.full(len(stopped), floor), marker="x",
                       color=colour, label=f"{study}: pruned/failed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel(selection.metric)
    ax.set_title("Optimisation history")
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def importances(values: dict[str, dict[str, float]]) -> plt.Figure | None:
    """Hyperparameter importances per study ({study: {param: importance}})."""
    rows = [{"study": study, "hyperparameter": p, "importance": v} for study, scores in values.items()
            for p, v in scores.items()]
    if not rows:
        return None
    data = pd.DataFrame(rows)
    figure, ax = plt.subplots(figsize=(7.5, 0.45 * data.hyperparameter.nunique() * max(1, len(values)) + 1.2))
    sns.barplot(data=data, y="hyperparameter", x="importance", hue="study", ax=ax, palette="deep")
    ax.set_title("Hyperparameter importances (Optuna's fANOVA evaluator)")
    figure.tight_layout()
    return figure


def gallery(images: list[np.ndarray], names: list[str], references: list[list[str]],
            captions: dict[str, list[str]]) -> plt.Figure:
    """One row per image: the thumbnail, its references, and each compared model's caption."""
    figure, axes = plt.subplots(len(images), 2, figsize=(12, 2.6 * len(images)), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 3.2]})
    for row, (image, name, refs) in enumerate(zip(images, names, references)):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(name, fontsize=8)
        axes[row, 0].axis("off")
        lines = [f"{label}: {caps[row]}" for label, caps in captions.items()] + ["references:"] + \
            [f"  {ref}" for ref in refs[:3]]
        axes[row, 1].text(0, 1, "\n".join(lines), va="top", fontsize=8.5, family="monospace", wrap=True)
        axes[row, 1].axis("off")
    figure.tight_layout()
    return figure


def attention_maps(images: list[np.ndarray], label: str, captioned: list[tuple[str, np.ndarray]]) -> plt.Figure:
    """For each of the first images: the photo, then a spotlight of where the model looked for each word."""
    from captioning.decoding.spotlight import spotlight

    columns = 1 + max(len(caption.split()) for caption, _ in captioned)
    figure, axes = plt.subplots(len(captioned), columns, figsize=(1.3 * columns, 1.55 * len(captioned)),
                                squeeze=False)
    for row, (caption, weights) in enumerate(captioned):
        side = int(round(np.sqrt(weights.shape[1])))
        axes[row, 0].imshow(images[row])
        axes[row, 0].set_title("photo", fontsize=7)
        words = caption.split()
        for column in range(1, columns):
            axis = axes[row, column]
            axis.axis("off")
            if column <= len(words):
                axis.imshow(spotlight(images[row], weights[column - 1].reshape(side, side), size=96))
                axis.set_title(words[column - 1], fontsize=8)
        axes[row, 0].axis("off")
    figure.suptitle(f"{label}: attention per word", fontsize=9)
    figure.tight_layout()
    return figure
