"""The long-running jobs behind the command line: ``nncore compress`` and ``nncore auto``.

Each command module (:mod:`~nncore.jobs.compress`, :mod:`~nncore.jobs.auto`) provides
``add_arguments(parser)`` and ``run(args) -> int``. What they share lives beside them:

- :mod:`~nncore.jobs.options`   options, defaults, progress lines, per-job settings;
- :mod:`~nncore.jobs.baseline`  the trained baseline (cached) and the checks on model and data;
- :mod:`~nncore.jobs.pruning`   building a registered pruner for a job, pruning and fine-tuning;
- :mod:`~nncore.jobs.cost`      FLOPs and params of a pruned model, after speedup or estimated;
- :mod:`~nncore.jobs.measure`   accuracy, latency and size of a model (PyTorch or ONNX Runtime);
- :mod:`~nncore.jobs.report`    ``report.json`` / ``report.md`` and the printed table;
- :mod:`~nncore.jobs.plots`     the PNG plots;
- :mod:`~nncore.jobs.search`    :func:`~nncore.jobs.search.search_sparsities`, the Optuna search of ``nncore auto``;
- :mod:`~nncore.jobs.annealing` the simulated-annealing Optuna sampler.
"""
