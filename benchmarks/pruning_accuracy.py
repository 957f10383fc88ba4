"""Pruning accuracy on scikit-learn's digits: every pruning algorithm, the same fine-tuning budget.

    python benchmarks/pruning_accuracy.py --output pruning_accuracy.md [--threads 1] [--only l1,level]

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images), a fixed stratified split into train
(1,221), validation (216, used only by the search pruners' evaluators) and test (360); pixels
scaled by the training mean/std. Model: ``nncore.zoo.DigitsCNN`` trained with Adam + cosine
schedule (``--dense-epochs``, seeded), the "dense" row. Each algorithm then prunes a copy and
fine-tunes it for ``--finetune-epochs`` (Adam at the training learning rate, cosine schedule):

* filter pruners (l1, l2, fpgm, apoz, mean_activation, taylorfo) prune 50% of the filters of
  every conv; slim follows Network Slimming (Liu et al., 2017): sparsity training of the dense
  model with an L1 penalty on the BatchNorm scales (``add_slim_subgradient``; SGD, see
  ``SLIM_EPOCHS``), then ONE SlimPruner pruning 50% of all BatchNorm channels by a single
  global |gamma| threshold (the per-BN split it chose is in the notes), then the fine-tuning;
* level and AGP prune 80% of the weights of every conv and the classifier (AGP gradually,
  during the fine-tuning budget);
* the lottery ticket reaches 80% in ``--lottery-rounds`` train-prune-rewind rounds of
  ``--dense-epochs`` each; the winning ticket is compared with the same mask on a random
  re-initialisation trained the same way (the "lottery control" row);
* NetAdapt, simulated annealing and AutoCompress search per-layer filter sparsities (base_algo
  'l1') for 50% of all conv weights, scoring candidates on the validation split; their target
  is "at least as accurate as uniform L1 at the same overall sparsity", i.e. the l1 row;
* AMC searches per-layer preserve ratios for the FLOPs that uniform L1 keeps (50% of every
  conv's filters, measured after speedup), ``--amc-episodes`` episodes rewarded by the
  validation accuracy (see ``run_amc``); target: FLOPs <= the l1 row's and accuracy >= it.

Columns: sparsity = masked fraction of the weights (BN channels for slim) of the layers the
algorithm prunes; params = non-zero parameters and FLOPs = multiply-accumulates per image, both
after ``nncore.speedup.ModelSpeedup`` removed what it can (unstructured masks keep the dense
shapes, so their FLOPs stay dense); accuracy on the test split; drop = dense minus accuracy, in
points; seconds = pruning + fine-tuning wall time (for slim including the sparsity training).
Unregistered algorithms are "not available".
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nncore import get_compressor  # noqa: E402
from nncore.errors import UnknownCompressorError  # noqa: E402
from nncore.zoo import DigitsCNN  # noqa: E402

try:
    from nncore.utils import count_flops_params
except ImportError:  # pragma: no cover - counter not there yet
    count_flops_params = None
try:
    from nncore.speedup import ModelSpeedup
except ImportError:  # pragma: no cover - speedup not there yet
    ModelSpeedup = None

BATCH = 64
DUMMY = torch.zeros(1, 1, 8, 8)
CONVS = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
WEIGHTS_80 = [{"sparsity": 0.8, "op_types": ["Conv2d", "Linear"]}]
FILTER_PRUNERS = ("l1", "l2", "fpgm", "apoz", "mean_activation", "taylorfo", "slim")
SEARCH_PRUNERS = ("netadapt", "simulated_annealing", "auto_compress")
ALGORITHMS = FILTER_PRUNERS + ("level", "agp", "lottery") + SEARCH_PRUNERS + ("amc",)
# Network Slimming's sparsity training. SGD (momentum 0.9, cosine), as in the paper: under Adam the
# per-parameter normalisation turns the L1 subgradient into the same lr-sized shrink of every gamma
# whatever the penalty (1e-2..1e-1 gave identical, useless rankings). The penalty is far above the
# paper's 1e-4 because the budget is ~200 steps instead of ~60k: the L1 shrink per gamma,
# lr * penalty * steps / (1 - momentum), is of the same order (~6 here and there). Without sparsity
# training (or with 1e-4..1e-2 here) bn3's |gamma| (~1.3) all exceed bn1/bn2's (~1.0) and the global
# ranking keeps one channel of bn1 and bn2 (fine-tuned accuracy ~75%). At 10 epochs, 5e-2..7e-2
# give a usable split; 4e-2 still empties bn2, >= 8.5e-2 collapses every gamma: 6e-2 is the middle.
SLIM_EPOCHS = 10
SLIM_LR = 0.1
SLIM_PENALTY = 6e-2


# ------------------------------------------------------------------------------------- data
@dataclass
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data() -> Digits:
    """The fixed split: test 20% (stratified, seed 0), validation 15% of the rest (seed 1)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.15, stratify=y_rest, random_state=1)
    mean, std = x_train.mean(), x_train.std()
    return Digits(*((t - mean) / std if t.is_floating_point() else t
                    for t in (x_train, y_train, x_val, y_val, x_test, y_test)))


# ------------------------------------------------------------------------------------- training
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in [0, 1] (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        result = float((model(x).argmax(1) == y).float().mean())
    model.train(was_training)
    return result


def train_epoch(model: nn.Module, data: Digits, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                after_backward: Callable[[], None] | None = None, criterion: nn.Module | None = None) -> None:
    """One epoch of mini-batches (seeded order); ``after_backward`` runs before each step."""
    criterion = criterion or nn.CrossEntropyLoss()
    model.train()
    order = torch.randperm(len(data.x_train), generator=generator)
    for start in range(0, len(order), BATCH):
        batch = order[start:start + BATCH]
        optimizer.zero_grad()
        criterion(model(data.x_train[batch]), data.y_train[batch]).backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()


def train(model: nn.Module, data: Digits, epochs: int, lr: float, seed: int,
          optimizer: torch.optim.Optimizer | None = None, on_epoch: Callable[[int], None] | None = None) -> None:
    """``epochs`` epochs of Adam with a cosine learning-rate schedule."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        if on_epoch is not None:
            on_epoch(epoch)
        train_epoch(model, data, optimizer, generator)
        scheduler.step()


# ------------------------------------------------------------------------------------- results
@dataclass
class Row:
    algorithm: str
    sparsity: str = "-"
    params: str = "-"
    flops: str = "-"
    accuracy: float | None = None
    seconds: float | None = None
    note: str = ""


def masked_fraction(pruners: list[Any]) -> float:
    """Masked weights over all weights of the configured layers."""
    masks = [w.weight_mask for pruner in pruners for w in pruner.wrappers.values()]
    return sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks)


def size_of(model: nn.Module, masks: dict | None) -> tuple[int, int, str]:
    """Non-zero parameters and MACs per image after speedup (when it works), and a note."""
    note = ""
    if masks and ModelSpeedup is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = ModelSpeedup(copy.deepcopy(model), DUMMY, masks).speedup_model()
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            note = f"speedup failed: {type(exc).__name__}"
    params = sum(int(p.count_nonzero()) for p in model.parameters())
    flops = count_flops_params(model, DUMMY, verbose=False)[0] if count_flops_params else 0
    return params, flops, note


def finish(name: str, pruner: Any, model: nn.Module, data: Digits, started: float, note: str = "") -> Row:
    """Measure a pruned and fine-tuned model, then unwrap it (so its masks stop being enforced).

    ``pruner`` may be a list of pruners that each wrapped different layers of ``model``.
    """
    acc = accuracy(model, data.x_test, data.y_test)
    seconds = time.perf_counter() - started
    pruners = pruner if isinstance(pruner, list) else [pruner]
    masks = {name: mask for p in pruners for name, mask in p.masks().items()}
    sparsity = masked_fraction(pruners)
    for p in reversed(pruners):
        plain = p.unwrap_model()
    params, flops, speed_note = size_of(plain, masks)
    return Row(name, f"{sparsity:.1%}", f"{params:,}", f"{flops:,}", acc, seconds, "; ".join(filter(None, [note, speed_note])))


# ------------------------------------------------------------------------------------- the algorithms
@dataclass
class Setup:
    data: Digits
    dense: nn.Module
    initial: dict[str, torch.Tensor]
    dense_epochs: int
    finetune_epochs: int
    lottery_rounds: int
    lr: float
    workdir: Path
    amc_episodes: int = 300


def slim_sparsity_training(model: nn.Module, data: Digits) -> None:
    """Network Slimming's sparsity training: L1 subgradient on every BatchNorm scale (SGD, cosine)."""
    from nncore.builtin_pruners.slim import add_slim_subgradient

    optimizer = torch.optim.SGD(model.parameters(), lr=SLIM_LR, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, SLIM_EPOCHS)
    generator = torch.Generator().manual_seed(13)
    for _ in range(SLIM_EPOCHS):
        train_epoch(model, data, optimizer, generator, after_backward=lambda: add_slim_subgradient(model, SLIM_PENALTY))
        scheduler.step()


def run_filter_pruner(name: str, setup: Setup) -> Row:
    """Prune 50% of the filters (slim: sparsity training, then 50% of all BN channels), then fine-tune."""
    model = copy.deepcopy(setup.dense)
    started = time.perf_counter()
    cls = get_compressor(name)
    note = ""
    if name == "slim":  # Network Slimming: sparsity training, then one global |gamma| threshold
        slim_sparsity_training(model, setup.data)
    optimizer = torch.optim.Adam(model.parameters(), lr=setup.lr)
    if name == "slim":
        pruner = cls(model, [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}])
    elif name == "taylorfo":
        pruner = cls(model, CONVS, optimizer, statistics_batch_num=4)
    elif name in ("apoz", "mean_activation"):
        pruner = cls(model, CONVS, statistics_batch_num=4)
    else:
        pruner = cls(model, CONVS)
    for each in pruner if isinstance(pruner, list) else [pruner]:
        each.compress()
    if name == "slim":
        split = ", ".join(f"{bn} {int(w.weight_mask.sum())}/{w.weight_mask.numel()}"
                          for bn, w in pruner.wrappers.items())
        note = (f"{SLIM_EPOCHS} epochs sparsity training (SGD lr {SLIM_LR}, L1 penalty {SLIM_PENALTY:g}), "
                f"one global ranking of abs(gamma) keeps {split}")
    if name in ("apoz", "mean_activation"):
        with torch.no_grad():
            for start in range(0, 4 * BATCH, BATCH):
                model(setup.data.x_train[start:start + BATCH])
    train(model, setup.data, setup.finetune_epochs, setup.lr, seed=11, optimizer=optimizer)
    return finish(name, pruner, model, setup.data, started, note=note)


def run_level(name: str, setup: Setup) -> Row:
    """One-shot 80% magnitude pruning, then fine-tune."""
    model = copy.deepcopy(setup.dense)
    started = time.perf_counter()
    pruner = get_compressor("level")(model, WEIGHTS_80)
    pruner.compress()
    train(model, setup.data, setup.finetune_epochs, setup.lr, seed=11)
    return finish(name, pruner, model, setup.data, started)


def run_agp(name: str, setup: Setup) -> Row:
    """0% -> 80% over the first half of the fine-tuning epochs, the rest to recover."""
    model = copy.deepcopy(setup.dense)
    started = time.perf_counter()
    end_epoch = max(2, round(setup.finetune_epochs * 0.5))
    config = [{"initial_sparsity": 0.0, "final_sparsity": 0.8, "start_epoch": 0, "end_epoch": end_epoch,
               "frequency": 1, "op_types": ["Conv2d", "Linear"]}]
    pruner = get_compressor("agp")(model, config)
    pruner.compress()
    train(model, setup.data, setup.finetune_epochs, setup.lr, seed=11, on_epoch=pruner.update_epoch)
    return finish(name, pruner, model, setup.data, started)


def run_lottery(name: str, setup: Setup) -> list[Row]:
    """Train-prune-rewind rounds from the dense model's initial weights; then the control."""
    model = DigitsCNN()
    model.load_state_dict(setup.initial)
    started = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=setup.lr)
    config = [{"sparsity": 0.8, "prune_iterations": setup.lottery_rounds, "op_types": ["Conv2d", "Linear"]}]
    pruner = get_compressor("lottery")(model, config, optimizer)
    pruner.compress()
    for round_index in pruner.get_prune_iterations():
        pruner.prune_iteration_start()
        if round_index == 0:  # round 0 trains the dense model from the same start: reuse it
            model.load_state_dict({k: v for k, v in _wrapped_state(pruner, setup.dense).items()})
            continue
        train(model, setup.data, setup.dense_epochs, setup.lr, seed=7, optimizer=optimizer)
    masks = {n: w.weight_mask.clone() for n, w in pruner.wrappers.items()}
    ticket = finish(name, pruner, model, setup.data, started,
                    note=f"{setup.lottery_rounds} rounds of {setup.dense_epochs} epochs (round 0 = the dense training)")
    control_scores = []
    for seed in (101, 102, 103):
        torch.manual_seed(seed)
        control = DigitsCNN()
        fixed = get_compressor("level")(control, [{"sparsity": 0.0, "op_types": ["Conv2d", "Linear"]}])
        fixed.compress()
        for n, mask in masks.items():
            fixed.wrappers[n].set_masks(mask)
        train(control, setup.data, setup.dense_epochs, setup.lr, seed=7)
        control_scores.append(accuracy(control, setup.data.x_test, setup.data.y_test))
        fixed.unwrap_model()
    row = Row("lottery control (random init, same mask)", ticket.sparsity, ticket.params, ticket.flops,
              sum(control_scores) / len(control_scores), None, "mean of 3 seeds")
    return [ticket, row]


def _wrapped_state(pruner: Any, dense: nn.Module) -> dict[str, torch.Tensor]:
    """The dense model's state under the keys of ``pruner``'s wrapped model (masks kept)."""
    state = pruner.bound_model.state_dict()
    dense_state = dense.state_dict()
    for key in list(state):
        plain = key.replace(".module.", ".")
        if plain in dense_state:
            state[key] = dense_state[plain].clone()
    return state


def run_search(name: str, setup: Setup) -> Row:
    """Search per-layer filter sparsities for 50% of the conv weights, then fine-tune."""
    data = setup.data
    model = copy.deepcopy(setup.dense)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(5)

    def evaluator(candidate: nn.Module) -> float:
        return accuracy(candidate, data.x_val, data.y_val)

    def short_term_fine_tuner(candidate: nn.Module) -> None:
        train_epoch(candidate, data, torch.optim.Adam(candidate.parameters(), lr=setup.lr / 10), generator)

    def trainer(candidate, optimizer, criterion, epoch, callback) -> None:
        train_epoch(candidate, data, optimizer, generator, after_backward=callback, criterion=criterion)

    common = {"base_algo": "l1", "experiment_data_dir": str(setup.workdir / name), "verbose": False}
    cls = get_compressor(name)
    if name == "netadapt":
        pruner = cls(model, CONVS, short_term_fine_tuner, evaluator, sparsity_per_iteration=0.1, **common)
    elif name == "simulated_annealing":
        pruner = cls(model, CONVS, evaluator, seed=0, **common)
    else:
        pruner = cls(model, CONVS, trainer, evaluator, DUMMY, num_iterations=2, admm_num_iterations=4,
                     admm_training_epochs=1, row=1e-2, seed=0, cool_down_rate=0.8, **common)
    pruner.compress()
    train(model, data, setup.finetune_epochs, setup.lr, seed=11)
    layers = ", ".join(f"{n} {s:.0%}" for n, s in pruner.final_sparsities().items())
    return finish(name, pruner, model, data, started, note=layers)


def uniform_l1_flops_ratio(setup: Setup) -> float:
    """FLOPs of the dense model pruned by uniform L1 (50% of every conv's filters, sped up) over dense FLOPs."""
    pruner = get_compressor("l1")(copy.deepcopy(setup.dense), CONVS)
    pruner.compress()
    masks = pruner.masks()
    _, pruned, _ = size_of(pruner.unwrap_model(), masks)
    _, dense, _ = size_of(setup.dense, None)
    return pruned / dense


def run_amc(name: str, setup: Setup) -> Row:
    """AMC at uniform L1's FLOPs: the DDPG search scored on the validation split, then fine-tune."""
    data = setup.data
    flops_ratio = uniform_l1_flops_ratio(setup)
    model = copy.deepcopy(setup.dense)
    started = time.perf_counter()
    val_loader = [(data.x_val[i:i + BATCH], data.y_val[i:i + BATCH]) for i in range(0, len(data.x_val), BATCH)]

    def evaluator(loader: Any, candidate: nn.Module) -> float:
        return 100 * accuracy(candidate, data.x_val, data.y_val)

    warmup = max(1, setup.amc_episodes // 4)
    pruner = get_compressor(name)(
        model, [{"op_types": ["Conv2d", "Linear"]}], evaluator, val_loader, flops_ratio=flops_ratio,
        channel_round=1, warmup=warmup, train_episode=setup.amc_episodes, output_dir=str(setup.workdir),
        suffix=name, seed=0, verbose=False)
    pruner.compress()
    searched = pruner.best["accuracy"]
    train(model, data, setup.finetune_epochs, setup.lr, seed=11)
    channels = ", ".join(f"{n} {kept}/{total}" for n, (kept, total) in pruner.final_channels().items())
    note = (f"budget {flops_ratio:.2%} of dense FLOPs (uniform l1's); {setup.amc_episodes} episodes "
            f"({warmup} warm-up), channel_round 1; kept {channels}; val accuracy before fine-tuning {searched:.1f}%")
    return finish(name, pruner, model, data, started, note=note)


def run(name: str, setup: Setup) -> list[Row]:
    """The rows of one algorithm; "not available" when it is not registered."""
    try:
        get_compressor(name)
    except UnknownCompressorError:
        return [Row(name, note="not available")]
    runner = {"level": run_level, "agp": run_agp, "lottery": run_lottery, "amc": run_amc}.get(name)
    runner = runner or (run_search if name in SEARCH_PRUNERS else run_filter_pruner)
    try:
        rows = runner(name, setup)
    except Exception as exc:  # noqa: BLE001 - one broken algorithm must not hide the others
        return [Row(name, note=f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:120])]
    return rows if isinstance(rows, list) else [rows]


# ------------------------------------------------------------------------------------- table
TARGETS = {
    **{name: ("drop", 1.5) for name in FILTER_PRUNERS},
    "level": ("drop", 1.0),
    "agp": ("drop", 1.0),
    "lottery": ("drop", 1.0),
}


def verdicts(rows: list[Row], dense: Row) -> dict[str, str]:
    """PASS / FAIL of every algorithm against the targets in the module docstring."""
    by_name = {row.algorithm: row for row in rows}
    result = {}
    for row in rows:
        if row.accuracy is None or row.algorithm == dense.algorithm or row.algorithm.startswith("lottery control"):
            continue
        drop = (dense.accuracy - row.accuracy) * 100
        if row.algorithm in TARGETS:
            ok = drop <= TARGETS[row.algorithm][1] + 1e-9
            text = f"drop {drop:.2f} <= {TARGETS[row.algorithm][1]}"
            if row.algorithm == "lottery":
                control = next((r for r in rows if r.algorithm.startswith("lottery control")), None)
                beats = control is not None and row.accuracy > control.accuracy
                ok, text = ok and beats, f"{text} and above control: {beats}"
        elif row.algorithm == "amc":
            uniform = by_name.get("l1")
            ok = (uniform is not None and uniform.accuracy is not None and row.accuracy >= uniform.accuracy
                  and int(row.flops.replace(",", "")) <= int(uniform.flops.replace(",", "")))
            text = "FLOPs <= uniform l1's and accuracy >= uniform l1"
        else:
            uniform = by_name.get("l1")
            budget = float(row.sparsity.rstrip("%")) >= 50.0 - 1e-9
            ok = budget and uniform is not None and uniform.accuracy is not None and row.accuracy >= uniform.accuracy
            text = f"sparsity {row.sparsity} >= 50% and accuracy >= uniform l1"
        result[row.algorithm] = f"{'PASS' if ok else 'FAIL'} ({text})"
    return result


def markdown(rows: list[Row], dense: Row, checks: dict[str, str]) -> str:
    """The result table (and the target checks) as markdown."""
    header = "| algorithm | sparsity | params | FLOPs | accuracy | drop vs dense | seconds | notes |"
    lines = [header, "|" + "---|" * 8]
    for row in rows:
        acc = "-" if row.accuracy is None else f"{row.accuracy:.2%}"
        drop = "-" if row.accuracy is None or row is dense else f"{(dense.accuracy - row.accuracy) * 100:+.2f}"
        seconds = "-" if row.seconds is None else f"{row.seconds:.1f}"
        lines.append(f"| {row.algorithm} | {row.sparsity} | {row.params} | {row.flops} | {acc} | {drop} | {seconds} "
                     f"| {row.note} |")
    lines += ["", "Targets:", ""] + [f"- {name}: {verdict}" for name, verdict in checks.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="markdown file to write the table to")
    parser.add_argument("--dense-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=16)
    parser.add_argument("--lottery-rounds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--amc-episodes", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(ALGORITHMS))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    data = load_data()
    torch.manual_seed(0)
    dense = DigitsCNN()
    initial = copy.deepcopy(dense.state_dict())
    started = time.perf_counter()
    train(dense, data, args.dense_epochs, args.lr, seed=7)
    params, flops, _ = size_of(dense, None)
    dense_row = Row("dense", "0.0%", f"{params:,}", f"{flops:,}", accuracy(dense, data.x_test, data.y_test),
                    time.perf_counter() - started, f"{args.dense_epochs} epochs")
    rows = [dense_row]
    names = [n for n in args.only.split(",") if n] or list(ALGORITHMS)
    with tempfile.TemporaryDirectory() as workdir:
        setup = Setup(data, dense, initial, args.dense_epochs, args.finetune_epochs, args.lottery_rounds, args.lr,
                      Path(workdir), args.amc_episodes)
        for name in names:
            rows += run(name, setup)
            print(f"{rows[-1].algorithm}: {rows[-1].accuracy} ({rows[-1].note})", file=sys.stderr, flush=True)
    text = markdown(rows, dense_row, verdicts(rows, dense_row))
    print(text)
    Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
