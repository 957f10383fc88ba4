"""nncore's built-in quantization algorithms, each a plugin module named by an ``nncore`` entry point.

The core never imports this package; it finds the algorithms through the registry. Every
algorithm extends :class:`nncore.compressor.Quantizer` (re-exported here, with the wrapper, for
NNI-style imports), exactly as a third-party quantizer does.
For seed-compatible imports: ``from nncore.builtin_quantizers import QAT_Quantizer, DoReFaQuantizer``.
"""
from nncore.builtin_quantizers.bnn import BNNQuantizer
from nncore.builtin_quantizers.dorefa import DoReFaQuantizer
from nncore.builtin_quantizers.lsq import LsqQuantizer
from nncore.builtin_quantizers.naive import NaiveQuantizer
from nncore.builtin_quantizers.ptq import PtqQuantizer
from nncore.builtin_quantizers.qat import QAT_Quantizer, QATQuantizer
from nncore.compressor import Quantizer
from nncore.wrapper import QuantizerModuleWrapper

__all__ = [
    "BNNQuantizer",
    "DoReFaQuantizer",
    "LsqQuantizer",
    "NaiveQuantizer",
    "PtqQuantizer",
    "QATQuantizer",
    "QAT_Quantizer",
    "Quantizer",
    "QuantizerModuleWrapper",
]
