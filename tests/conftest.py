"""Shared fixtures: a private cache directory and small generated datasets (no downloads, no shared data)."""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import pytest

# Before captioning is imported anywhere: weights, features and datasets go to a per-session directory.
os.environ["CAPTIONING_CACHE"] = tempfile.mkdtemp(prefix="captioning-test-cache-")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The Java-based scorers (PTB tokenizer, METEOR) cost seconds per process and evaluation: tests of training and
# searching skip them; tests/test_metrics.py turns them on and checks them against pycocoevalcap.
os.environ["CAPTIONING_JAVA_METRICS"] = "off"

from captioning.config import Config  # noqa: E402
from captioning.data.synthetic import write_dataset  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    """The session's cache (weights, IR, features: a few hundred MB) goes with it."""
    shutil.rmtree(os.environ["CAPTIONING_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """160 generated scenes in the Kaggle layout with split files (120/20/20)."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), count=160, seed=1)


@pytest.fixture()
def tiny_config() -> Config:
    """A configuration that trains in seconds: raw-pixel features and a small decoder."""
    return Config(encoder="pixels", image_size=32, feature_grid=4, vocab_min_count=1, max_length=24,
                  embedding_size=32, units=64, dropout=0.1, learning_rate=0.01, batch_size=32, epochs=8,
                  patience=8, beam_width=3)


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    """A PNG whose header claims 20,000 x 20,000 pixels (400 million): Pillow refuses it as a decompression bomb on
    opening, before reading any pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
