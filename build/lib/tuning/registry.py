"""Kept so that `python tuning/registry.py ...` goes on working: the model registry is captioning/serving/registry.py,
also installed as the command `captioning-registry`."""
import sys

from captioning.serving.registry import main

if __name__ == "__main__":
    sys.exit(main())
