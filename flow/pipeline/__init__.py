"""The flow: the run directory, opening a trained run, the steps and their runner, the report,
plots, the paper's table, the ZOBNN study, the benchmark.

Imports point down the stack only: cli -> pipeline -> zobnn -> hw -> reliability, nn -> core
(checked by tests/test_layers.py).
"""
