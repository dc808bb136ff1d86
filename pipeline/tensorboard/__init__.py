"""What is written for or read from TensorBoard.

Summaries, HParams, the server and the event-file budget.
"""
