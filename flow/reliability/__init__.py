"""Reliability: fault maps and their sampler, campaigns and their store, statistics, parallel
execution, the GA ranking and its ground truth, Algorithm 1, RAP and P_drop.

Imports point down the stack only: cli -> pipeline -> zobnn -> hw -> reliability, nn -> core
(checked by tests/test_layers.py).
"""
