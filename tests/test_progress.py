"""The per-epoch display of a search: a rewritten status line on a terminal, kept lines with --verbose."""
import io

from tuning.progress import EpochProgress

RECORD = {"loss": 2.8314, "dev_loss": 2.8659, "dev_bleu4": 0.15123}


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_verbose_keeps_one_line_per_epoch():
    stream = io.StringIO()
    progress = EpochProgress("dev_bleu4", verbose=True, stream=stream)
    progress.start(3, epochs=20)
    progress.epoch(3, 1, RECORD)
    progress.epoch(3, 2, {**RECORD, "dev_bleu4": 0.2})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("trial   3  epoch  1/20  loss 2.831  dev loss 2.866  dev_bleu4 0.1512  ")
    assert "epoch  2/20" in lines[1] and "dev_bleu4 0.2000" in lines[1]


def test_a_terminal_gets_one_status_line_that_is_cleared_before_lasting_output():
    stream = Terminal()
    progress = EpochProgress("dev_bleu4", stream=stream)
    progress.start(0, epochs=5)
    progress.epoch(0, 1, RECORD)
    text = stream.getvalue()
    assert "\n" not in text and text.count("\r\033[K") == 2 and text.endswith("0.1512  0m00s")
    progress.clear()
    assert stream.getvalue().endswith("\r\033[K") and not progress.shown
    progress.clear()  # nothing shown: nothing written
    assert stream.getvalue() == text + "\r\033[K"


def test_a_log_file_gets_nothing_without_verbose():
    stream = io.StringIO()
    progress = EpochProgress("dev_bleu4", stream=stream)
    progress.start(0, epochs=5)
    progress.epoch(0, 1, RECORD)
    progress.clear()
    assert stream.getvalue() == ""
