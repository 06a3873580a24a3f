import pytest

from captioning.data.text import END, START, UNK, Vocabulary, clean_caption, pad_batch


def test_clean_caption_like_the_seed():
    assert clean_caption("A dog's ball, 2 kids & 1 Frisbee!") == ["a", "dogs", "ball", "kids", "frisbee"]
    assert clean_caption("  ... 42 ") == []


def test_vocabulary_min_count_unknown_and_round_trip(tmp_path):
    captions = [["a", "dog", "runs"], ["a", "dog", "sits"], ["a", "cat"]]
    vocab = Vocabulary.build(captions, min_count=2)
    assert vocab.words[:4] == ["<pad>", UNK, START, END]
    assert set(vocab.words[4:]) == {"a", "dog"} and vocab.words[4] == "a"  # most frequent first
    ids = vocab.encode(["a", "cat"], max_length=10)
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id and ids[2] == vocab.index[UNK]
    assert vocab.decode(ids) == ["a", UNK]
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").words == vocab.words
    assert (tmp_path / "vocab.json").read_text().lstrip().startswith("{")  # JSON, not pickle


def test_encode_cuts_long_captions_but_keeps_end_token():
    vocab = Vocabulary.build([["w"]], min_count=1)
    ids = vocab.encode(["w"] * 50, max_length=6)
    assert len(ids) == 6 and ids[-1] == vocab.end_id


def test_decode_stops_at_end_and_padding():
    vocab = Vocabulary.build([["x", "y"]], min_count=1)
    x, y = vocab.index["x"], vocab.index["y"]
    assert vocab.decode([vocab.start_id, x, vocab.end_id, y]) == ["x"]
    assert vocab.decode([x, 0, y]) == ["x"]


def test_load_rejects_a_file_that_is_not_a_vocabulary(tmp_path):
    (tmp_path / "v.json").write_text('{"words": ["a", "b"]}')
    with pytest.raises(ValueError, match="not a captioning vocabulary"):
        Vocabulary.load(tmp_path / "v.json")


def test_pad_batch():
    assert pad_batch([[1, 2, 3], [4]]).tolist() == [[1, 2, 3], [4, 0, 0]]
