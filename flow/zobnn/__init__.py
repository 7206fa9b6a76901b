"""ZOBNN: binary networks with float parameters, their float32 fault image, the selective
quantization, and the ZOBNN network as integer hardware.

Imports point down the stack only: cli -> pipeline -> zobnn -> hw -> reliability, nn -> core
(checked by tests/test_layers.py).
"""
