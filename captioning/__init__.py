"""The captioning workbench's library: an image's path from file to caption, and a trial's from config to scores.

    data/        dataset reading and checking, images, text and vocabulary, the embedded synthetic set
    features/    encoder registry, offline weights, the cached map store, a dataset's prepared features
    models/      decoder registry and the StepDecoder protocol; the merge, attention and ensemble decoders
    inference/   a bundle exported as OpenVINO IR and decoded without TensorFlow (the Captioner's default)
    decoding/    greedy and beam search, consensus re-ranking, the Captioner and its bundle
    metrics/     metric registry; BLEU, CIDEr-D, the COCO scorers
    evaluation/  a captioner scored on a split; decoding settings chosen on dev
    training/    batches, dev selection and checkpoints, teacher forcing, SCST, the train-and-evaluate run
    serving/     the logged MLflow model, request rules, the model registry's champion rule, local servers
    core/        small shared helpers: cache folder, graph functions, locks, names, tracking URI and tags
    config.py    the one Config; cli.py the command line (python -m captioning, `captioning`)

Lower folders never import higher ones, and nothing here imports tuning/, reports/, app.py or benchmarks/.
"""
import os

from captioning.core import legacy, quiet_import

# Before TensorFlow loads: keep its C++ start-up lines (absl's I0000/W0000/E0000: CPU features, oneDNN, CUDA
# factories) and gRPC's (Keras Tuner imports it) out of the user's terminal. Level 2 still lets E0000 lines through,
# and gRPC ignores TensorFlow's setting. The project's own messages are Python's, which neither setting touches; a
# value already in the environment wins, and `python -m captioning -v` shows them all (LIBRARY_LOGS_SHOWN).
LIBRARY_LOGS_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "NONE"}
LIBRARY_LOGS_SHOWN = {"TF_CPP_MIN_LOG_LEVEL": "0", "GRPC_VERBOSITY": "INFO"}
for _name, _value in LIBRARY_LOGS_QUIET.items():
    os.environ.setdefault(_name, _value)
quiet_import.install()  # oneDNN's notice, which the level above does not reach (captioning/core/quiet_import.py)
legacy.install()  # the module names a version logged before this layout imports (captioning/core/legacy.py)
