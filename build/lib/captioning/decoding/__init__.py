"""Decoding: greedy and beam search over any StepDecoder (search.py), consensus re-ranking of a beam (consensus.py),
the Captioner that turns images into captions (captioner.py), its bundle on disk (bundle.py), and attention drawn
over a photo (spotlight.py)."""
