"""A search runs for hours while its user edits the code: TensorFlow must not read the package's source when it
traces (autograph does, at the line numbers of the module already imported), or a trial fails mid-way."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    import keras
    import numpy as np
    import captioning
    assert Path(captioning.__file__).parent == Path(sys.argv[1]), captioning.__file__
    from captioning.config import Config
    from captioning.data.text import Vocabulary
    from captioning.decoding.search import beam_search, greedy_search
    from captioning.features.encoders import make_encoder
    from captioning.features.store import ImageInputs, image_pipeline
    from captioning.models import make_step_decoder
    from captioning.models.attention import build_attention_decoder
    from captioning.models.base import masked_cross_entropy
    from captioning.models.merge import build_decoder
    from captioning.training.scst import SelfCritical

    vocab = Vocabulary(["red", "blue", "circle"])
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 5)).astype(np.float32)
    maps = rng.normal(size=(4, 4, 3)).astype(np.float32)
    tokens = rng.integers(1, len(vocab), size=(4, 6)).astype(np.int32)
    merge_config = Config(encoder="pixels", embedding_size=8, units=8, scst_samples=2)
    attention_config = merge_config.replace(attention_units=4, decoder="attention")
    merge = build_decoder(merge_config, len(vocab), feature_dim=5)
    attention = build_attention_decoder(attention_config, len(vocab), feature_dim=5, positions=4, channels=3)
    # Every package module the traced code lives in gets lines inserted at its top, as an edit would.
    for module in Path(sys.argv[1]).rglob("*.py"):
        module.write_text("\\n" * 7 + module.read_text())
    captions = [[["red", "circle"], ["blue", "circle"]]] * 4
    for model, config, inputs in ((merge, merge_config, features),
                                  (attention, attention_config, ImageInputs(features, maps))):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=masked_cross_entropy, jit_compile=False)
        decoder = make_step_decoder(model, vocab)
        model.train_on_batch(decoder.training_inputs(inputs, np.arange(4), tokens[:, :-1]), tokens[:, 1:])
        greedy_search(decoder, inputs, 6)
        beam_search(decoder, inputs, 6, 2, 0.5)
        SelfCritical(config, vocab, model, inputs, captions, None, None).step(np.arange(2), seed=(0, 0))
    from PIL import Image
    paths = []
    for i, colour in enumerate(("red", "blue")):
        paths.append(Path(f"photo{i}.png"))
        Image.new("RGB", (20, 12), colour).save(paths[-1])
    encoder = make_encoder(Config(encoder="pixels", image_size=16))
    assert sum(len(batch) for batch in image_pipeline(paths, [False, True], encoder, 2)) == 2
    print("ok")
''')


def test_editing_the_package_under_a_running_process_does_not_break_its_tracing(tmp_path):
    copy = tmp_path / "captioning"
    shutil.copytree(PROJECT / "captioning", copy, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(copy)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
                               # an autograph conversion that fails is an error, not a quiet run of the raw code
                               "AUTOGRAPH_STRICT_CONVERSION": "1"},
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
