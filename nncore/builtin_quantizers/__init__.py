"""nncore's built-in quantization algorithms, each a plugin module named by an ``nncore`` entry point.

The core never imports this package; it finds the algorithms through the registry.
For seed-compatible imports: ``from nncore.builtin_quantizers import QAT_Quantizer, DoReFaQuantizer``.
"""
from nncore.builtin_quantizers.base import BaseQuantizer, QuantizerModuleWrapper
from nncore.builtin_quantizers.bnn import BNNQuantizer
from nncore.builtin_quantizers.dorefa import DoReFaQuantizer
from nncore.builtin_quantizers.lsq import LsqQuantizer
from nncore.builtin_quantizers.naive import NaiveQuantizer
from nncore.builtin_quantizers.qat import QAT_Quantizer, QATQuantizer

__all__ = [
    "BNNQuantizer",
    "BaseQuantizer",
    "DoReFaQuantizer",
    "LsqQuantizer",
    "NaiveQuantizer",
    "QATQuantizer",
    "QAT_Quantizer",
    "QuantizerModuleWrapper",
]
