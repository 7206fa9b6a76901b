"""Hardware: the RTL accelerator (design, code generation, Verilator simulation), the hls4ml
project and extension, Yosys, FPGA boards.

Imports point down the stack only: cli -> pipeline -> zobnn -> hw -> reliability, nn -> core
(checked by tests/test_layers.py).
"""
