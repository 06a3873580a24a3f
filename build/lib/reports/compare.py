"""Compare searches: a leaderboard, figures and a caption gallery, as one offline HTML file and a Markdown report.

    python reports/compare.py                              # the latest study of the default experiment (shapes)
    python reports/compare.py --experiment flickr8k        # the latest study of another experiment
    python reports/compare.py --study A --study B          # two studies side by side (e.g. Optuna vs Keras Tuner)
    python reports/compare.py --runs RUN_ID RUN_ID ...     # any runs

Reads MLflow with the search's rules (--tracking-uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db), and
Optuna's studies (for the importances) from --storage, else $CAPTIONING_STORAGE, else the storage the study logged;
writes reports/<name>/report.html (figures embedded), report.md and the figures as PNG files beside it.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import os
import sys
from pathlib import Path

from reports.collect import BLEU, ReportError, Selection

PROJECT = Path(__file__).resolve().parents[1]

GALLERY_IMAGES = 6


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", action="append", metavar="NAME", help="a study to include (repeatable)")
    p.add_argument("--experiment", metavar="NAME", help="report on the latest study of this experiment "
                   "(default: shapes)")
    p.add_argument("--runs", nargs="+", metavar="RUN_ID", help="compare these MLflow runs instead of whole studies")
    p.add_argument("--out", metavar="DIR", help="output folder (default: reports/<study names>)")
    p.add_argument("--top", type=int, default=5, help="trials per study in the BLEU and learning-curve figures")
    p.add_argument("--gallery", type=int, default=GALLERY_IMAGES, help="test images in the caption gallery (0: none)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else ./mlflow.db)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage for the importances (default: "
                   "$CAPTIONING_STORAGE, else the one the study logged, whose password is not logged: keep it in "
                   "~/.pgpass or $PGPASSWORD)")
    p.add_argument("--registered-model", default="captioner", metavar="NAME", help="registry name (champion "
                   "and challenger are marked)")
    return p


# --- what goes beyond MLflow's tables: Optuna importances and fresh captions for the gallery -----------------------

def param_importances(selection: Selection, storage: str | None) -> tuple[dict, list[str]]:
    import optuna

    values, notes = {}, []
    for study in selection.studies:
        if study.engine != "optuna":
            notes.append(f"{study.name}: importances need an Optuna study ({study.engine} has none)")
            continue
        url = storage or study.storage
        if not url or "***" in url:
            notes.append(f"{study.name}: its Optuna storage is not known here; pass --storage URL for importances")
            continue
        try:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            loaded = optuna.load_study(study_name=study.name, storage=url)
            values[study.name] = optuna.importance.get_param_importances(loaded)
        except Exception as exc:  # a missing database, too few trials, one value everywhere...
            notes.append(f"{study.name}: no importances ({type(exc).__name__}: {exc})")
    return values, notes


ATTENTION_IMAGES = 3  # test images whose attention maps the report shows


def gallery_captions(selection: Selection, count: int, model_name: str):
    """Test images of the first study's data, their references, and the captions of the champion and the best
    trial of each study. Returns (images, names, references, {model label: captions}) or None with a note."""
    from captioning.data.dataset import load_dataset
    from captioning.data.images import load_rgb
    from captioning.decoding.captioner import Captioner
    from captioning.serving.mlflow_model import ModelNotFound, download_bundle

    data = next((s.data for s in selection.studies if s.data), None)
    if count <= 0:
        return None, "gallery skipped (--gallery 0)"
    if not data or not Path(data).exists():
        return None, f"no caption gallery: the studies' data ({data}) is not on this machine"
    dataset = load_dataset(Path(data))
    names = dataset.split("test")[:count] or dataset.split("dev")[:count]
    images = [load_rgb(dataset.images[n]) for n in names]
    models = {}
    try:
        models[f"champion ({model_name})"] = download_bundle(f"models:/{model_name}@champion")
    except ModelNotFound:
        pass
    missing = []
    for row in selection.top(1).itertuples():
        label = f"best of {row.study}" if selection.trials.study.nunique() > 1 else f"best ({row.label})"
        try:
            models[label] = download_bundle(row.model_uri)
        except ModelNotFound:  # e.g. its artifacts were deleted: the rest of the gallery still stands
            missing.append(label)
    if not models:
        return None, "no caption gallery: none of the models could be fetched"
    captions, attention = {}, None
    for label, bundle in models.items():
        captioner = Captioner.load(bundle)
        inputs = captioner.encode_images(images)  # as the model was trained (flip averaging included)
        decoded, maps = captioner.decode_features(inputs, with_attention=True) if captioner.has_attention else \
            (captioner.decode_features(inputs), None)
        captions[label] = [alts[0][0] for alts in decoded]
        if maps is not None and attention is None:  # the first attention model's maps (the champion's, if it has)
            attention = (label, [(captions[label][i], maps[i]) for i in range(min(ATTENTION_IMAGES, len(images)))])
    note = f"gallery: could not fetch the model of {', '.join(missing)}" if missing else None
    return (images, names, [dataset.raw_captions[n] for n in names], captions, attention), note


# --- rendering ------------------------------------------------------------------------------------------------------

def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return ""
        return f"{value:.4f}" if 0.01 <= abs(value) < 10 else f"{value:.4g}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def leaderboard(selection: Selection):
    """The leaderboard as a DataFrame with display column names, best first."""
    frame = selection.trials.copy()
    frame["_rank"] = frame[selection.metric].where(frame.state == "complete")
    frame = frame.sort_values("_rank", ascending=False, na_position="last")
    columns = {"study": "study", "trial": "trial", "state": "state", "registry": "registry"}
    columns.update({f"dev_{b}": f"dev {b.upper().replace('BLEU', 'BLEU-')}" for b in BLEU})
    columns.update({f"test_{b}": f"test {b.upper().replace('BLEU', 'BLEU-')}" for b in BLEU})
    for score, title in (("cider", "CIDEr-D"), ("meteor", "METEOR"), ("rouge_l", "ROUGE-L")):
        for split in ("dev", "test"):  # the COCO metrics that the trials logged (older runs have none)
            if frame[f"{split}_{score}"].notna().any():
                columns[f"{split}_{score}"] = f"{split} {title}"
    columns.update({"wall_seconds": "wall s", "best_epoch": "best epoch"})
    columns.update({p: p for p in selection.params})
    columns["run_id"] = "run"
    if frame.study.nunique() == 1:
        columns.pop("study")
    table = frame[list(columns)].rename(columns=columns)
    table["run"] = table["run"].str[:8]
    return table


def _markdown_table(table) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


SORT_SCRIPT = """
<script>
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const descending = th.dataset.order !== "desc";
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = descending ? "desc" : "asc";
  const key = row => { const v = row.cells[column].dataset.value;  // only numeric cells carry one
                       return v === undefined ? row.cells[column].textContent : (v === "" ? -Infinity : Number(v)); };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
      const c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return descending ? -c : c; }).forEach(row => body.appendChild(row));
}));
</script>"""

STYLE = """
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; cursor: pointer; position: sticky; top: 0; }
th[data-order=desc]::after { content: " \\25BC"; } th[data-order=asc]::after { content: " \\25B2"; }
tr.champion td { background: #e6f4e6; } tr.challenger td { background: #fff6dd; }
tr.pruned td, tr.failed td, tr.killed td { color: #888; }
td.text { text-align: left; } img.figure { max-width: 100%; display: block; margin: 1em 0; }
.note { color: #835; }
</style>"""


def _html_table(table, sortable: bool = False, row_classes=None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for i, row in enumerate(table.itertuples(index=False)):
        cells = "".join(f'<td class="text">{html.escape(str(v))}</td>' if isinstance(v, str) else
                        f'<td data-value="{"" if v != v else v}">{html.escape(_fmt(v))}</td>' for v in row)
        css = f' class="{row_classes[i]}"' if row_classes else ""
        rows.append(f"<tr{css}>{cells}</tr>")
    return (f'<table class="{"sortable" if sortable else ""}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def render(selection: Selection, figures: dict[str, bytes], gallery, notes: list[str], out: Path, uri: str) -> Path:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        (out / f"{name}.png").write_bytes(png)
    board = leaderboard(selection)
    classes = [("champion" if "champion" in r else "challenger" if "challenger" in r else s)
               for r, s in zip(board["registry"], board["state"])]
    studies = pd.DataFrame([{"study": s.name, "engine": s.engine, "experiment": s.experiment, "metric": s.metric,
                             "data": s.data or "", "trials": int((selection.trials.study == s.name).sum()),
                             **{state: int(((selection.trials.study == s.name) & (selection.trials.state == state))
                                           .sum()) for state in ("complete", "pruned", "failed")}}
                            for s in selection.studies])
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"Captioning search report: {selection.name}"
    captions = {"bleu_top": "BLEU-1..4 of the top trials", "learning_curves": "Learning curves of the top trials",
                "metric_by_parameter": f"{selection.metric} against each hyperparameter",
                "history": "Optimisation history", "importances": "Hyperparameter importances",
                "gallery": "Caption gallery", "attention": "Where the model looked"}
    md = [f"# {title}", "", f"Written {when} from `{uri}`. Ranked by `{selection.metric}`.", "",
          _markdown_table(studies), ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    md += ["## Leaderboard", "", _markdown_table(board), ""]
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Written {when} from <code>{html.escape(uri)}</code>. Ranked by <code>{selection.metric}</code>; "
            "click a column header to sort. Green: champion, yellow: challenger.</p>", _html_table(studies)]
    body += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    body += ["<h2>Leaderboard</h2>", _html_table(board, sortable=True, row_classes=classes)]
    for name, png in figures.items():
        if name == "gallery":
            continue
        md += [f"## {captions[name]}", "", f"![{captions[name]}]({name}.png)", ""]
        body += [f"<h2>{captions[name]}</h2>",
                 f'<img class="figure" alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">']
    if gallery is not None:
        images, names, references, model_captions, _ = gallery
        md += ["## Caption gallery", "", "![Caption gallery](gallery.png)", ""]
        rows = []
        for i, (image, name, refs) in enumerate(zip(images, names, references)):
            thumb = _thumbnail(image)
            generated = "".join(f"<p><b>{html.escape(label)}</b>: {html.escape(caps[i])}</p>"
                                for label, caps in model_captions.items())
            md += [f"- `{name}`: " + "; ".join(f"**{label}**: {caps[i]}" for label, caps in model_captions.items())
                   + " — references: " + " / ".join(refs[:3])]
            rows.append(f'<tr><td><img alt="{html.escape(name)}" src="data:image/png;base64,{thumb}"><br>'
                        f'{html.escape(name)}</td><td class="text">{generated}</td><td class="text">'
                        + "<br>".join(html.escape(r) for r in refs) + "</td></tr>")
        body += ["<h2>Caption gallery</h2>", "<table><thead><tr><th>image</th><th>generated</th>"
                 "<th>references</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}</head>"
            f"<body>{''.join(body)}{SORT_SCRIPT}</body></html>")
    (out / "report.html").write_text(page)
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out


def _thumbnail(image, size: int = 160) -> str:
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def make_report(args) -> Path:
    from mlflow import MlflowClient

    from captioning.core.names import check_name, inside
    from captioning.core.tracking import redact, resolve_tracking_uri
    from reports import figures as draw
    from reports.collect import collect, find_studies

    for study in args.study or []:
        check_name(study, "--study", "shapes-optuna-1a2b3c4d")
    if args.experiment is not None:
        check_name(args.experiment, "--experiment", "flickr8k")
    check_name(args.registered_model, "--registered-model", "captioner")
    uri = resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient()
    if args.runs:
        selection = collect(client, run_ids=args.runs, model_name=args.registered_model,
                            name=f"runs-{args.runs[0][:8]}-{len(args.runs)}")
    else:
        studies = find_studies(client, args.study, args.experiment)
        selection = collect(client, studies, model_name=args.registered_model)
    notes = list(selection.notes)
    importances, more = param_importances(selection, args.storage or os.environ.get("CAPTIONING_STORAGE"))
    notes += more
    gallery, note = gallery_captions(selection, args.gallery, args.registered_model)
    if note:
        notes.append(note)
    figures = {"bleu_top": draw.bleu_of_top(selection, args.top),
               "learning_curves": draw.learning_curves(selection, args.top),
               "metric_by_parameter": draw.metric_by_parameter(selection),
               "history": draw.optimisation_history(selection),
               "importances": draw.importances(importances)}
    if gallery is not None:
        figures["gallery"] = draw.gallery(*gallery[:4])
        if gallery[4] is not None:
            figures["attention"] = draw.attention_maps(gallery[0], *gallery[4])
    pngs = {name: _png(figure) for name, figure in figures.items() if figure is not None}
    out = Path(args.out) if args.out else inside(PROJECT / "reports", selection.name)
    return render(selection, pngs, gallery, notes, out, redact(uri))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from captioning.config import ConfigError
    from captioning.core.tracking import password_warning
    from captioning.data.dataset import DataError
    from captioning.serving.mlflow_model import ModelNotFound

    for option, url in (("--storage", args.storage), ("--tracking-uri", args.tracking_uri)):
        warning = password_warning(option, url)
        if warning:
            print(f"report: {warning}", file=sys.stderr)
    try:
        out = make_report(args)
    except (ReportError, DataError, ModelNotFound, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {out / 'report.html'} (open it in a browser) and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
