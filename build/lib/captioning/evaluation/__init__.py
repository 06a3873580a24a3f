"""Evaluation: a captioner scored on a split with every registered metric (evaluate.py), and the decoding settings
chosen on dev after training: an ensemble's length penalty, consensus re-ranking (choices.py)."""
