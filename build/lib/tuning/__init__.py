"""The search: Optuna or Keras Tuner around the one train-and-evaluate function (captioning.training.run), every
trial logged to MLflow (search.py, the engines, trials.py, space.py, settings.py, coordination.py, progress.py).
registry.py and infra.py here only forward to captioning/serving/, where the registry and the local servers live."""
