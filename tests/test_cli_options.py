"""The command line's decoding options are checked before anything loads (one line, exit code 2), and its commands
keep TensorFlow's and gRPC's own log lines out of the terminal unless -v asks for them."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from captioning.cli import MAX_BEAM, _check_beam, build_parser, main

PROJECT = Path(__file__).resolve().parents[1]
# absl's prefixed lines (I0000 00:00:1796651044.18 27722 cpu_feature_guard.cc:227] ...), its warning before them,
# and oneDNN's notice.
LIBRARY_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cpu_feature_guard", re.MULTILINE)


@pytest.mark.parametrize("beam", [0, MAX_BEAM + 1, -5, 100000])
def test_a_beam_width_out_of_range_is_one_line(beam, capsys):
    assert main(["caption", "photo.jpg", "--model", "/no/model", "--beam", str(beam)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: --beam {beam}: give a beam width from 1 (greedy) to {MAX_BEAM}, "
                                         "or leave it out for the model's own"]
    assert captured.out == ""
    assert main(["evaluate", "--model", "/no/model", "--beam", str(beam)]) == 2
    assert f"error: --beam {beam}: give a beam width" in capsys.readouterr().err


@pytest.mark.parametrize("beam", ["1", str(MAX_BEAM)])
def test_a_beam_width_in_range_passes_the_check(beam):
    for command in (["caption", "photo.jpg"], ["evaluate"]):
        args = build_parser().parse_args([*command, "--model", "/no/model", "--beam", beam])
        _check_beam(args)  # (the widest decodes in the test below)
        assert args.beam == int(beam)


def _user_environment() -> dict:
    """This environment as a user's terminal has it: without the log levels the tests' own process set."""
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}


def test_commands_hide_tensorflows_log_lines_unless_verbose(tmp_path):
    model = PROJECT / "tests" / "fixtures" / "legacy" / "bundle"  # a small bundle: caption loads TensorFlow and Keras
    image = PROJECT / "tests" / "fixtures" / "legacy" / "images" / "red_circle_blue_square.png"
    quiet = subprocess.run([sys.executable, "-m", "captioning", "caption", str(image), "--model", str(model)],
                           cwd=tmp_path, env=_user_environment(), capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert len(quiet.stdout.splitlines()) == 1  # its caption
    assert not LIBRARY_LINE.findall(quiet.stderr), quiet.stderr

    # The same command with -v shows them (this also shows that the pattern above finds them), and the widest beam
    # the command line allows decodes.
    loud = subprocess.run([sys.executable, "-m", "captioning", "caption", str(image), "--model", str(model),
                           "--beam", str(MAX_BEAM), "-v"], cwd=tmp_path, env=_user_environment(), capture_output=True,
                          text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert len(loud.stdout.splitlines()) == 1
    assert LIBRARY_LINE.search(loud.stderr), loud.stderr


def test_the_quiet_import_drops_only_absls_info_lines_and_its_warning():
    from captioning.core.quiet_import import filtered

    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796671733.025337    5783 port.cc:153] oneDNN custom operations are on.\n"
            "E0000 00:00:1796671733.025337    5783 some.cc:1] an error TensorFlow meant to show\n"
            "/x.py:3: UserWarning: a warning of Python's\n  warnings.warn(msg)\n")
    assert filtered(text) == ("E0000 00:00:1796671733.025337    5783 some.cc:1] an error TensorFlow meant to show\n"
                              "/x.py:3: UserWarning: a warning of Python's\n  warnings.warn(msg)\n")
