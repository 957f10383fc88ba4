"""The ``nncore`` console script (also ``python -m nncore``): list algorithms, print schemas,
validate configs, run jobs.

The jobs ``compress`` and ``auto`` live in :mod:`nncore.jobs`: their options in the light
:mod:`nncore.jobs.options` (no PyTorch import, so help and the first progress line come at once),
their work in :mod:`nncore.jobs.compress` / :mod:`nncore.jobs.auto` (``run(args) -> int``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from nncore.errors import ConfigError, NncoreError

# command: (NAME of add_NAME_arguments / describe_NAME / check_NAME_arguments in nncore.jobs.options,
#           the module whose run(args) does the work, help)
JOBS = {
    "compress": ("compress", "nncore.jobs.compress", "prune, fine-tune, speed up (and quantize) a model"),
    "auto": ("auto", "nncore.jobs.auto", "search per-layer sparsities under a FLOPs or params budget"),
}


class CommandLineError(NncoreError):
    """A command-line argument names something that cannot be used."""


def load_object(spec: str, option: str) -> Any:
    """Import ``module:attribute`` (as given to ``--model`` / ``--data``) or raise a one-line error."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CommandLineError(f"{option} {spec!r}: expected module:callable, e.g. mypkg.models:build")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CommandLineError(f"{option} {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.pop(0)
    target = getattr(module, attribute, None)
    if target is None:
        raise CommandLineError(f"{option} {spec!r}: module {module_name!r} has no attribute {attribute!r}")
    return target


def build_model(spec: str | None) -> Any:
    """The model named by ``--model module:callable``, or the built-in :class:`~nncore.zoo.DigitsCNN`."""
    import torch.nn as nn

    if spec is None:
        from nncore.zoo import DigitsCNN

        return DigitsCNN()
    factory = load_object(spec, "--model")
    try:
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as exc:
        raise CommandLineError(f"--model {spec!r}: calling it failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise CommandLineError(f"--model {spec!r}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def read_config_list(path: str) -> Any:
    """A config_list from a JSON file (or YAML, when PyYAML is installed)."""
    file = Path(path)
    if file.is_dir():
        raise CommandLineError(f"config file {path!r} is a directory, not a file")
    if not file.is_file():
        raise CommandLineError(f"config file {path!r} does not exist")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise CommandLineError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CommandLineError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandLineError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, with a rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    from nncore.registry import default_registry, list_compressors

    rows = [(i.name, i.kind, f"{i.cls.__module__}.{i.cls.__qualname__}", i.distribution) for i in list_compressors()]
    print(text_table(("name", "kind", "class", "distribution"), rows))
    for label, reason in default_registry().failed.items():
        print(f"not loaded: {label}: {reason}", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from nncore.registry import get_compressor

    print(json.dumps(get_compressor(args.name).json_schema(), indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from nncore.registry import get_compressor

    compressor_class = get_compressor(args.algo)
    config_list = read_config_list(args.config)
    model = build_model(args.model)
    layers = compressor_class.check_config(model, config_list)
    rows = [(c.name, c.op_type, str(c.index), json.dumps(dict(c.options))) for c in layers]
    print(text_table(("layer", "type", "entry", "options"), rows))
    print(f"valid: {len(layers)} layer(s) selected for {args.algo!r}")
    return 0


class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to every option's help that has a default and does not name it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default" in text or default is None or default is False or default == argparse.SUPPRESS \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nncore`` command (subcommands included)."""
    from nncore import __version__
    from nncore.jobs import options

    parser = argparse.ArgumentParser(prog="nncore", description="PyTorch model compression.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"nncore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list the registered compressors", formatter_class=HelpFormatter)
    listing.set_defaults(func=cmd_list)

    schema = commands.add_parser("schema", help="print a compressor's config_list JSON Schema",
                                 formatter_class=HelpFormatter)
    schema.add_argument("name", help="registry name, e.g. agp")
    schema.set_defaults(func=cmd_schema)

    validate = commands.add_parser("validate", help="check a config_list file against a model",
                                   formatter_class=HelpFormatter)
    validate.add_argument("config", help="config_list as JSON (or YAML)")
    validate.add_argument("--algo", required=True, help="registry name, e.g. level")
    validate.add_argument("--model", help="module:callable returning the model (default: the built-in DigitsCNN)")
    validate.set_defaults(func=cmd_validate)

    for name, (job, module_name, help_text) in JOBS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        getattr(options, f"add_{job}_arguments")(sub)
        sub.set_defaults(func=_job_runner(module_name), describe=getattr(options, f"describe_{job}"),
                         check=getattr(options, f"check_{job}_arguments"))
    return parser


def _job_runner(module_name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not args.quiet:
            print(f"nncore {args.command}: {args.describe(args)}", file=sys.stderr, flush=True)
        args.check(args)  # the options that need no PyTorch, before the job's imports
        return importlib.import_module(module_name).run(args)

    return run


def _one_line_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
    print(f"nncore: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nncore`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"nncore {args.command}: {exc}", file=sys.stderr)
        return 1
    except NncoreError as exc:
        print(f"nncore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nncore {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
