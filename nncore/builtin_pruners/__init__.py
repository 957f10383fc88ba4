"""nncore's built-in pruning algorithms, each a plugin module named by an ``nncore`` entry point.

The core never imports this package; it finds the algorithms through the registry.
For seed-compatible imports: ``from nncore.builtin_pruners import LevelPruner, AGP_Pruner``.
"""
from nncore.builtin_pruners.activation_rank import ActivationAPoZRankFilterPruner, ActivationMeanRankFilterPruner
from nncore.builtin_pruners.admm import ADMMPruner
from nncore.builtin_pruners.amc import AMCPruner
from nncore.builtin_pruners.agp import AGP_Pruner, AGPPruner
from nncore.builtin_pruners.auto_compress import AutoCompressPruner
from nncore.builtin_pruners.filter_weight import FPGMPruner, L1FilterPruner, L2FilterPruner
from nncore.builtin_pruners.hidden_size import HiddenSizePruner
from nncore.builtin_pruners.level import LevelPruner
from nncore.builtin_pruners.lottery import LotteryTicketPruner
from nncore.builtin_pruners.netadapt import NetAdaptPruner
from nncore.builtin_pruners.simulated_annealing import SimulatedAnnealingPruner
from nncore.builtin_pruners.slim import SlimPruner
from nncore.builtin_pruners.taylor import TaylorFOWeightFilterPruner
from nncore.builtin_pruners.transformer_head import TransformerHeadPruner

__all__ = [
    "ADMMPruner",
    "AMCPruner",
    "AutoCompressPruner",
    "LotteryTicketPruner",
    "NetAdaptPruner",
    "SimulatedAnnealingPruner",
    "ActivationAPoZRankFilterPruner",
    "ActivationMeanRankFilterPruner",
    "AGPPruner",
    "AGP_Pruner",
    "FPGMPruner",
    "HiddenSizePruner",
    "L1FilterPruner",
    "L2FilterPruner",
    "LevelPruner",
    "SlimPruner",
    "TaylorFOWeightFilterPruner",
    "TransformerHeadPruner",
]
