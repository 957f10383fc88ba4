"""Reading and writing files: broken mask files say what they are, written files get the usual permissions."""
from __future__ import annotations

import os
import random
import stat

import pytest
import torch

from nncore.artifacts import load_masks, save_torch
from nncore.errors import ArtifactError

NOT_A_MASK_FILE = "not a mask file (truncated / empty / not a torch file)"


@pytest.fixture
def mask_file(tmp_path):
    path = tmp_path / "good.pth"
    save_torch({"conv1": {"weight": torch.ones(4, 1, 3, 3), "bias": None}}, path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes"])
def test_a_broken_mask_file_is_not_a_mask_file(tmp_path, mask_file, damage):
    content = mask_file.read_bytes()
    broken = tmp_path / "broken.pth"
    broken.write_bytes({"truncated": content[: len(content) // 2], "empty": b"",
                        "random bytes": random.Random(0).randbytes(600)}[damage])
    with pytest.raises(ArtifactError) as info:
        load_masks(broken)
    assert str(info.value) == f"mask file {str(broken)!r}: {NOT_A_MASK_FILE}"
    assert "weights_only" not in str(info.value)


def test_a_directory_is_reported_as_a_directory(tmp_path, mask_file):
    with pytest.raises(ArtifactError, match=f"mask file {str(tmp_path)!r} is a directory, not a file"):
        load_masks(tmp_path)
    assert load_masks(mask_file)["conv1"]["weight"].shape == (4, 1, 3, 3)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = save_torch({"a": torch.ones(1)}, tmp_path / "file.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_speedup_given_a_directory_says_so(tmp_path, tiny_cnn):
    from nncore.speedup import ModelSpeedup

    with pytest.raises(ArtifactError, match=f"mask file {str(tmp_path)!r} is a directory, not a file"):
        ModelSpeedup(tiny_cnn, torch.zeros(1, 1, 8, 8), str(tmp_path))
