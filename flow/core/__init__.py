"""The core model: typed precisions, the integer network, the weight-memory image, the integer
executor, the plan, the run config, atomic file writes.

Imports point down the stack only: cli -> pipeline -> zobnn -> hw -> reliability, nn -> core
(checked by tests/test_layers.py).
"""
