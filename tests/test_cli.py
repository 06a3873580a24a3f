import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioning.cli import main
from captioning.decoding.captioner import Captioner

PROJECT = Path(__file__).resolve().parents[1]
FAST = ["--set", "encoder=pixels", "--set", "image_size=32", "--set", "feature_grid=4", "--set", "epochs=2",
        "--set", "units=32", "--set", "embedding_size=16", "--set", "vocab_min_count=1"]


def test_train_evaluate_caption(shapes_dir, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--data", str(shapes_dir), "--out", str(out), "--quiet", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "| test | beam-3 |" in printed and "saved the captioner" in printed and (out / "metrics.json").is_file()
    assert main(["evaluate", "--model", str(out), "--data", str(shapes_dir), "--split", "dev", "--beam", "1"]) == 0
    assert "| dev | greedy |" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(out), "--data", str(shapes_dir), "--split", "dev", "--set",
                 "no_repeat_ngram=2", "--set", "length_penalty=1"]) == 0
    assert "| dev | beam-3 |" in capsys.readouterr().out
    image = shapes_dir / "Images" / "scene_00003.jpg"
    assert main(["caption", str(image), "--model", str(out), "--alternatives"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].strip()

    # Consensus re-ranking: chosen on dev among 30 settings (or none), saved with its index if chosen; a captioner
    # trained to re-rank carries the index of its train split and captions with it; --set turns it off.
    assert main(["rerank", "--model", str(out), "--data", str(shapes_dir), "--out", str(tmp_path / "rr"),
                 "--metric", "cider"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line.count("|") == 9][1:]
    assert len(rows) == 3 * (1 + 3 * 3) and sum("(chosen)" in row for row in rows) == 1
    table = {}  # (beam, neighbours, weight) -> dev CIDEr-D, as printed
    for row in rows:
        width, k, weight, *scores = (cell.replace("(chosen)", "").strip() for cell in row.strip("| ").split("|"))
        table[(int(width), 0 if k == "off" else int(k), float(weight))] = float(scores[-1])
    own = json.loads((out / "config.json").read_text())
    plain = (own["beam_width"], 0, own["rerank_weight"])
    assert set(table) == {(w, 0, own["rerank_weight"]) for w in (3, 5, 10)} | {
        (w, k, weight) for w in (3, 5, 10) for k in (5, 10, 20) for weight in (0.25, 0.5, 0.75)}
    # The chosen row: the best dev CIDEr-D among the re-rankings and the captioner's own beam (the other plain beams
    # are shown, not chosen), the first of equals; it is what the saved config decodes with.
    eligible = [key for key in table if key[1] or key == plain]
    best = max(eligible, key=table.get)
    chosen_row = next(row for row in rows if "(chosen)" in row)
    assert chosen_row.startswith(f"| {best[0]} | {best[1] or 'off'} | {best[2]:g} | ")
    chosen = json.loads((tmp_path / "rr" / "config.json").read_text())
    assert (chosen["beam_width"], chosen["rerank_neighbours"], chosen["rerank_weight"]) == best
    assert (tmp_path / "rr" / "neighbours.npz").is_file() == (chosen["rerank_neighbours"] > 0)
    assert "| test | beam-" in printed and (
        f"rerank: beam {best[0]}, the {best[1]} nearest training images, weight {best[2]:g}: chosen on dev cider"
        if best[1] else "rerank: no re-ranking beat the captioner's own beam of 3 on dev cider") in printed
    trained = tmp_path / "trained-rr"
    assert main(["train", "--data", str(shapes_dir), "--out", str(trained), "--quiet", *FAST,
                 "--set", "rerank_neighbours=3", "--set", "rerank_weight=1"]) == 0
    capsys.readouterr()
    reranking = Captioner.load(trained)
    assert reranking.neighbours.features.shape[0] == 120  # the train split's images
    assert (reranking.config.rerank_neighbours, reranking.config.rerank_weight) == (3, 1)
    assert main(["caption", str(image), "--model", str(trained)]) == 0
    caption = reranking.caption(str(image))
    assert caption.strip() and capsys.readouterr().out == caption + "\n"
    assert main(["caption", str(image), "--model", str(trained), "--set", "rerank_neighbours=0"]) == 0
    reranking.config = reranking.config.replace(rerank_neighbours=0)
    assert capsys.readouterr().out == reranking.caption(str(image)) + "\n"
    assert main(["caption", str(image), "--model", str(out), "--set", "rerank_neighbours=5"]) == 2
    err = capsys.readouterr().err
    assert "has no neighbour index" in err and "python -m captioning rerank" in err and "Traceback" not in err

    # Fine-tuning it: self-critical epochs only, its sizes fixed; an ensemble is not fine-tuned as one.
    tuned = tmp_path / "tuned"
    assert main(["finetune", "--model", str(out), "--data", str(shapes_dir), "--out", str(tuned), "--quiet",
                 "--set", "scst_epochs=1", "--set", "scst_samples=2"]) == 0
    printed = capsys.readouterr().out
    assert "| test | beam-3 |" in printed and f"saved the captioner to {tuned}" in printed
    record = json.loads((tuned / "metrics.json").read_text())
    assert [h["stage"] for h in record["history"]] == ["scst"] and record["start"]["stage"] == "start"
    assert not (tuned / "finetune-checkpoint.npz").exists()  # finished: nothing left to resume
    loaded = Captioner.load(tuned)
    Captioner(loaded.config, loaded.vocab, loaded.model, [loaded.model]).save(tmp_path / "ensemble")
    for argv, message in ((["--set", "units=8", "--set", "scst_epochs=1"], "key(s) units shape the model"),
                          ([], "--set scst_epochs=4"),
                          (["--model", str(tmp_path / "ensemble"), "--set", "scst_epochs=1"], "an ensemble of 2")):
        assert main(["finetune", "--model", str(out), "--data", str(shapes_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err

    # Ensembling the two: one bundle of both decoders, scored; one captioner alone or another max_length is an error.
    assert main(["ensemble", "--model", str(out), "--model", str(tuned), "--data", str(shapes_dir),
                 "--out", str(tmp_path / "both")]) == 0
    printed = capsys.readouterr().out
    assert "| dev | beam-3 |" in printed and "| test | greedy |" in printed and "(2 decoders)" in printed
    assert "ensemble: beam search with length_penalty" in printed and "chosen on dev bleu4 (0.5: " in printed
    both = Captioner.load(tmp_path / "both")
    assert len(both.members) == 1 and both.caption(str(image)).strip()
    shutil.copytree(tuned, tmp_path / "longer")
    longer = json.loads((tmp_path / "longer" / "config.json").read_text())
    (tmp_path / "longer" / "config.json").write_text(json.dumps({**longer, "max_length": longer["max_length"] + 1}))
    for models, message in (([out], "at least two captioners"), ([out, tmp_path / "longer"], "max_length")):
        assert main(["ensemble", *(a for m in models for a in ("--model", str(m))), "--data", str(shapes_dir)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--set", "unitz=3"], "unknown config key 'unitz'"),
    (["train", "--data", "/no/such/folder"], "dataset folder /no/such/folder does not exist"),
    (["caption", "x.jpg", "--model", "/no/model"], "is not a captioner bundle"),
    (["caption", "x.jpg", "--model", "/no/model", "--set", "units=8"], "--set units: a trained captioner's model"),
    (["evaluate", "--model", "/no/model", "--set", "no_repeat_ngram=1"], "'no_repeat_ngram' must be 0 (off) or"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_image_to_caption_is_one_line(shapes_dir, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["train", "--data", str(shapes_dir), "--out", str(out), "--quiet", *FAST]) == 0
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert main(["caption", str(tmp_path / "bad.jpg"), "--model", str(out)]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_help_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "captioning", "--help"], cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == 0 and all(c in done.stdout for c in ("train", "finetune", "ensemble", "evaluate", "caption"))
