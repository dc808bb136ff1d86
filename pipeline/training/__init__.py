"""Training: the loop, its compiled steps, resume, distribution."""
