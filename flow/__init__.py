"""hetq: reliability-aware FPGA accelerators for quantized neural networks.

The import name is ``flow``; the command line is ``hetq``.
"""

__version__ = "0.1.0"
