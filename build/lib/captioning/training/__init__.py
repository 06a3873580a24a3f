"""Training: teacher-forcing batches (batches.py), dev selection and resumable checkpoints (selection.py), teacher
forcing of any registered decoder (teacher.py), self-critical sequence training (scst.py), and the one
train-and-evaluate run every caller shares (run.py)."""
