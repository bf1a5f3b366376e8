"""The ``twinkles`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import BaseModel

from twinkles import __version__
from twinkles.config import RunConfig, load_run
from twinkles.errors import TwinklesError

__all__ = ["main"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    from twinkles.sim.simulate import simulate_run

    run = load_run(args.config)
    quiet = args.quiet or not sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if not quiet:
            print(f"\r  rendered {done}/{total} visits", end="", file=sys.stderr, flush=True)

    summary = simulate_run(
        run, jobs=args.jobs, visits=args.visits, force=args.force, progress=progress
    )
    if not quiet and summary.rendered:
        print(file=sys.stderr)
    print(
        f"{run.config.name}: rendered {len(summary.rendered)} visits "
        f"({summary.cpu_seconds:.1f} CPU s), {len(summary.skipped)} already done; "
        f"eimages in {run.butler.root / 'eimage'}"
    )
    return 0


def _describe_model(model: type[BaseModel], prefix: str = "") -> list[str]:
    lines = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"{prefix}{name}:  # {(annotation.__doc__ or '').strip().splitlines()[0]}")
            lines += _describe_model(annotation, prefix + "  ")
            continue
        default = (
            "" if info.is_required() else f" = {info.get_default(call_default_factory=True)!r}"
        )
        lines.append(f"{prefix}{name}{default}  # {info.description or ''}")
    return lines


def _cmd_config_show(args: argparse.Namespace) -> int:
    if args.config:
        run = load_run(args.config)
        import yaml

        print(yaml.safe_dump(run.config.model_dump(mode="json"), sort_keys=False), end="")
    else:
        print("\n".join(_describe_model(RunConfig)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``twinkles`` command."""
    parser = argparse.ArgumentParser(
        prog="twinkles",
        description="Emulated LSST DM Level 2 pipeline: a literate cookbook of notebooks.",
    )
    parser.add_argument("--version", action="version", version=f"twinkles {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate a run's sky and render its eimages")
    p.add_argument("config", help="run configuration (runs/<name>.yaml) or run directory")
    p.add_argument("--jobs", "-j", type=int, default=None, help="worker processes")
    p.add_argument("--visits", type=int, nargs="+", help="only these visits (obsHistID)")
    p.add_argument("--force", action="store_true", help="simulate again from scratch")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("config", help="run configuration")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    p = config_sub.add_parser(
        "show", help="every field with its default and meaning, or a run's resolved config"
    )
    p.add_argument("config", nargs="?", help="a run configuration to resolve")
    p.set_defaults(func=_cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twinkles`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TwinklesError as exc:
        print(f"twinkles: {exc}", file=sys.stderr)
        return 2
    except (KeyError, FileNotFoundError) as exc:
        print(f"twinkles: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
