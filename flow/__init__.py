"""hetq: reliability-aware FPGA accelerators for quantized neural networks (import name ``flow``)."""

__version__ = "0.1.0"
