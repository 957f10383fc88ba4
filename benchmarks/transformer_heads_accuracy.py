"""Accuracy of a small ViT on digits after TransformerHeadPruner removes half of its heads.

    python benchmarks/transformer_heads_accuracy.py [--criteria l1_weight taylorfo ...] [--sparsity 0.5]
        [--iterations 4] [--epochs-per-iteration 1] [--epochs 40] [--finetune-epochs 10] [--finetune-lr 2e-3]
        [--seed 0] [--global-sort] [--dense-cache dense.pt]

A Hugging Face ``ViTForImageClassification`` built from a config (1 channel, 8x8 images, 2x2 patches,
hidden 64, 4 layers of 8 heads of 8 features, random init) trains on the digits train split (1,347
images) for ``--epochs`` epochs. Each criterion then prunes ``--sparsity`` of the heads of a copy of
it (every layer loses the same number, or ``--global-sort``) in ``--iterations`` steps with
``--epochs-per-iteration`` epochs of training between them (the pruner's ``num_iterations`` and
``trainer``; Adam, lr 1e-3), and the copy is fine-tuned for ``--finetune-epochs`` epochs with its
masks in place (Adam, cosine schedule from ``--finetune-lr``, as the dense training). Accuracy is on
the digits test split (450 images). "params" counts the parameters the pruned heads leave (masked
entries of Q, K, V and O not counted). Finally the fine-tuned masked ViT is really shrunk
(``nncore.speedup.ModelSpeedup``): its parameter count, and its accuracy and logits against the
masked model's. Everything is seeded; prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn as nn

from nncore.artifacts import load_torch, save_torch
from nncore.builtin_pruners import TransformerHeadPruner
from nncore.builtin_pruners.head_criteria import CRITERIA
from nncore.data import accuracy, digits_data, train_epochs
from nncore.speedup import ModelSpeedup

LAYERS, HEADS, HEAD_DIM = 4, 8, 8


class DigitsViT(nn.Module):
    """HF ViT for 1x8x8 digits that returns the logits."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=HEADS * HEAD_DIM,
                           num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=128, num_labels=10,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.vit = ViTForImageClassification(config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixels).logits


def attention_groups() -> list[list[str]]:
    return [[f"vit.vit.layers.{i}.attention.{p}_proj" for p in "qkvo"] for i in range(LAYERS)]


def count_params(model: nn.Module, masks: dict | None = None) -> int:
    """Parameters of ``model`` less the entries that ``masks`` zero."""
    total = sum(p.numel() for p in model.parameters())
    if masks:
        total -= sum(int((mask == 0).sum()) for entry in masks.values() for mask in entry.values() if mask is not None)
    return total


def prune_copy(dense: nn.Module, criterion: str, args: argparse.Namespace, data):
    """A pruned copy of ``dense`` and its pruner (still wrapped, so fine-tuning keeps the masks)."""
    model = copy.deepcopy(dense)
    torch.manual_seed(args.seed)

    def forward_runner(m: nn.Module) -> None:
        with torch.no_grad():
            for inputs, _ in data.train_loader:
                m(inputs)

    def trainer(m: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module, epoch) -> None:
        m.train()
        for inputs, labels in data.train_loader:
            optimizer.zero_grad()
            criterion(m(inputs), labels).backward()
            optimizer.step()

    pruner = TransformerHeadPruner(
        model, [{"sparsity": args.sparsity, "op_types": ["Linear"]}], HEAD_DIM, attention_groups(),
        ranking_criterion=criterion, global_sort=args.global_sort, num_iterations=args.iterations,
        epochs_per_iteration=args.epochs_per_iteration, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        trainer=trainer, criterion=nn.CrossEntropyLoss(), forward_runner=forward_runner, verbose=False,
    )
    pruner.compress()
    return model, pruner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--global-sort", action="store_true")
    parser.add_argument("--iterations", type=int, default=4, help="the pruner's num_iterations")
    parser.add_argument("--epochs-per-iteration", type=int, default=1)
    parser.add_argument("--dense-cache", help="load the trained dense ViT from this file, or save it there")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = digits_data(seed=args.seed)
    torch.manual_seed(args.seed)
    dense = DigitsViT()
    start = time.perf_counter()
    if args.dense_cache and Path(args.dense_cache).is_file():
        dense.load_state_dict(load_torch(args.dense_cache, "dense cache"))
        how = f"loaded from {args.dense_cache}"
    else:
        train_epochs(dense, data.train_loader, args.epochs, lr=2e-3, verbose=False)
        if args.dense_cache:
            save_torch(dense.state_dict(), args.dense_cache)
        how = f"{args.epochs} epochs in {time.perf_counter() - start:.0f} s"
    dense_accuracy = accuracy(dense, data.test_loader)
    rows = [("dense", "-", LAYERS * HEADS, count_params(dense), dense_accuracy)]
    print(f"dense: {how}, accuracy {dense_accuracy:.4f}", flush=True)

    for criterion in args.criteria:
        model, pruner = prune_copy(dense, criterion, args, data)
        heads = LAYERS * HEADS - sum(map(len, pruner.pruned_heads.values()))
        params = count_params(model, pruner.masks())
        steps = f" in {args.iterations} steps" if args.iterations > 1 else ""
        rows.append((f"pruned {args.sparsity:.0%}{steps}", criterion, heads, params, accuracy(model, data.test_loader)))
        torch.manual_seed(args.seed)
        train_epochs(model, data.train_loader, args.finetune_epochs, lr=args.finetune_lr, verbose=False)
        masks = pruner.masks()
        pruner.unwrap_model()
        masked_accuracy = accuracy(model, data.test_loader)
        rows.append((f"+ fine-tune {args.finetune_epochs} epochs", criterion, heads, params, masked_accuracy))
        test_images = torch.cat([inputs for inputs, _ in data.test_loader])
        with torch.no_grad():
            masked_logits = model.eval()(test_images)
        ModelSpeedup(model, test_images[:2], masks).speedup_model()
        with torch.no_grad():
            difference = float((model(test_images) - masked_logits).abs().max())
        rows.append(("+ speedup (really shrunk)", criterion, heads, count_params(model), accuracy(model, data.test_loader)))
        print(f"{criterion}: pruned heads per layer {[len(h) for h in pruner.pruned_heads.values()]}; speedup: "
              f"max |logit difference| to the masked model {difference:.2e}", flush=True)

    print()
    print("| model | criterion | heads | params | accuracy | vs dense |")
    print("|---|---|---:|---:|---:|---:|")
    for name, criterion, heads, params, acc in rows:
        print(f"| {name} | {criterion} | {heads} | {params:,} | {acc:.2%} | {100 * (acc - dense_accuracy):+.2f} pt |")


if __name__ == "__main__":
    main()
