"""Networks: model factories and the zoo, data sets, training, the QONNX front end that lowers any
network to the integer network.

Imports point down the stack only: cli -> pipeline -> zobnn -> hw -> reliability, nn -> core
(checked by tests/test_layers.py).
"""
