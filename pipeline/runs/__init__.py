"""Run records: the run directory, its record, flags and checkpoints.

No TensorFlow at import.
"""
