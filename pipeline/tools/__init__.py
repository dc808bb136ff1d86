"""What users run on finished runs: evaluate, predict, export, compare, sweep."""
