"""Speedup on a model the pruner still wraps: one clear error, the model untouched."""
from __future__ import annotations

import pytest
import torch

from nncore.builtin_pruners import L1FilterPruner
from nncore.errors import ArtifactError
from nncore.speedup import ModelSpeedup
from tests.conftest import assert_untouched, snapshot


def test_speedup_before_unwrap_model_says_so(tiny_cnn):
    pruner = L1FilterPruner(tiny_cnn, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    pruner.compress()
    masks = pruner.masks()
    before = snapshot(tiny_cnn)
    with pytest.raises(ArtifactError, match=r"masks: 'conv1' is still wrapped by the pruner; "
                                            r"call pruner.unwrap_model\(\) before speedup"):
        ModelSpeedup(tiny_cnn, torch.zeros(1, 1, 8, 8), masks)
    assert_untouched(tiny_cnn, before)
    pruner.unwrap_model()
    ModelSpeedup(tiny_cnn, torch.zeros(1, 1, 8, 8), masks).speedup_model()
    assert tiny_cnn.conv1.out_channels == 2
