"""The ``twinkles`` command."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from twinkles import __version__
from twinkles.config import RunConfig, load_run
from twinkles.errors import TwinklesError

__all__ = ["main"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    from twinkles.inputs.simulate import simulate_run

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


def _cmd_ingest_images(args: argparse.Namespace) -> int:
    from twinkles.inputs.source import prepare_inputs

    run = load_run(args.config)
    if not run.external:
        raise TwinklesError(
            f"{run.config_path} simulates its sky (inputs.source: simulate): there is nothing "
            f"to ingest; `twinkles simulate` or `twinkles run` makes its eimages"
        )
    report = prepare_inputs(run)
    for line in report.lines:
        print(line)
    print(f"repository: {run.butler.root}")
    return 1 if report.refused else 0


def _split_steps(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def stop_on_signals() -> None:
    """Make SIGTERM (``kill``, a batch system's time limit) stop ``twinkles run`` as Ctrl-C
    does: running tasks are cancelled and the run database is left ready to resume.

    SIGINT is set back to Python's handler too: a shell starts a background job (``cmd &``)
    with SIGINT ignored, and such a driver could not be interrupted otherwise.
    """

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)


def _cmd_run(args: argparse.Namespace) -> int:
    from twinkles.workflow.driver import run_pipeline

    stop_on_signals()
    run = load_run(args.config)
    summary = run_pipeline(
        run,
        executor=args.executor,
        steps=_split_steps(args.steps),
        force=args.force,
        only_failed=args.only_failed,
        workers=args.jobs,
        progress=not args.quiet,
        where={"visit": args.visits} if args.visits else None,
    )
    for line in summary.lines():
        print(line)
    from twinkles.note.browser import build_browser

    try:
        print(f"run browser: {build_browser(run.dir)}")
    except Exception as exc:  # the run's results stand without their index page
        print(f"the run browser was not written: {type(exc).__name__}: {exc}", file=sys.stderr)
    if summary.interrupted:
        print(f"interrupted: run `twinkles run {args.config}` again to resume", file=sys.stderr)
        return 130
    if not summary.ok:
        print(f"see `twinkles status {run.dir}` and the failed notebooks", file=sys.stderr)
    return 0 if summary.ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from twinkles.workflow.status import run_status

    status = run_status(load_run(args.run_dir))
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"{'step':<24}{'done':>7}{'failed':>8}{'blocked':>9}{'pending':>9}")
    for s in status["steps"]:
        print(f"{s['step']:<24}{s['done']:>7}{s['failed']:>8}{s['blocked']:>9}{s['pending']:>9}")
    for s in status["steps"]:
        for f in s["failures"]:
            cell = f" cell {f['cell']}" if f["cell"] is not None else ""
            print(
                f"{s['step']} {f['data_id']}: {f['state']} "
                f"({f['failure_class']}{cell}): {f['error']}"
            )
            if f["notebook"] and f["state"] == "failed":
                print(f"    {f['notebook']}")
    return 0


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cmd_report(args: argparse.Namespace) -> int:
    import json

    from twinkles.workflow.status import run_report

    report = run_report(load_run(args.run_dir))
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    header = ("step", "processed", "failed", "CPU h", "wall h", "CPU eff.", "success", "peak MB")
    print(f"{header[0]:<24}" + "".join(f"{h:>11}" for h in header[1:]))
    for entry in [*report["steps"], {"step": "total", **report["total"]}]:
        cells = (
            entry["data_ids_processed"],
            entry["data_ids_failed"],
            _fmt(entry["cpu_hours"], 4),
            _fmt(entry["wall_hours"], 4),
            _fmt(entry["cpu_efficiency"], 3),
            _fmt(entry["success_rate"], 3),
            _fmt(entry["peak_rss_mb"], 0),
        )
        print(f"{entry['step']:<24}" + "".join(f"{c!s:>11}" for c in cells))
    total = report["total"]
    if total["run_cpu_efficiency"] is not None:
        print(
            f"machine: CPU efficiency {total['run_cpu_efficiency']:.3f} of "
            f"{total['local_workers']} cores over {total['busy_hours']:.3f} h while tasks ran"
        )
    disk = report["disk"]
    print(
        f"disk: peak {_fmt(disk['peak_gb'], 2)} GB, now {_fmt(disk['last_gb'], 2)} GB "
        f"({disk['samples']} samples while running); {disk['removed_files']} intermediates "
        f"removed ({_fmt(disk['removed_gb'], 2)} GB)"
    )
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from twinkles.note.publish import PublishError, headline, publish_run

    try:
        written = publish_run(args.run_dir, args.dest, require_pdf=not args.no_pdf)
    except PublishError as exc:
        print(f"twinkles publish: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    report = json.loads((Path(args.dest) / "report.json").read_text())
    print(headline(report))
    return 0


def _cmd_note(args: argparse.Namespace) -> int:
    from twinkles.note.browser import build_browser
    from twinkles.note.build import NOTE_SOURCE, build_note

    run = load_run(args.run_dir)
    result = build_note(run.dir, source=args.source or NOTE_SOURCE, pdf=not args.no_pdf)
    print(f"the Note: {result.html} ({len(result.figures)} figures from executed notebooks)")
    if result.pdf:
        print(f"the Note as PDF: {result.pdf}")
    elif result.pdf_skipped:
        print(f"no PDF: {result.pdf_skipped}")
    print(f"run browser: {build_browser(run.dir)}")
    return 0


def _cmd_recipe_show(args: argparse.Namespace) -> int:
    from twinkles.workflow.contract import read_contract
    from twinkles.workflow.spec import COOKBOOK, PIPELINE

    name = args.name.removesuffix(".ipynb")
    try:
        step = PIPELINE.step(name)
        path, doc = step.recipe_path(), f"step {step.name} ({step.dimension}): {step.doc}"
    except KeyError:
        path, doc = COOKBOOK / f"{name}.ipynb", ""
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in COOKBOOK.glob("*.ipynb")))
            print(f"twinkles: no recipe {args.name!r}; the cookbook has {known}", file=sys.stderr)
            return 2
    if doc:
        print(doc)
    print(read_contract(path).describe())
    return 0


def _parameter_value(text: str) -> Any:
    """A parameter's value as YAML reads it (``3`` an int, ``true`` a bool, ``r`` a string)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _cmd_recipe_run(args: argparse.Namespace) -> int:
    from twinkles.workflow.manual import run_recipe
    from twinkles.workflow.spec import parse_data_id

    data_id = parse_data_id(args.data_id) if args.data_id else {}
    if args.visit is not None:
        data_id["visit"] = args.visit
    result = run_recipe(
        load_run(args.config),
        args.step,
        data_id,
        parameters={name: _parameter_value(value) for name, value in args.parameter or []},
        recipe=args.recipe,
        notebook=args.output,
        kernel_name=args.kernel,
    )
    record = result.record
    cpu = f", {record.cpu_s:.1f} CPU s" if record.cpu_s is not None else ""
    print(f"{args.step} {record.data_id}: {record.status} in {record.wall_s:.1f} s{cpu}")
    for w in record.writes:
        print(f"  wrote {w['path']}")
    if not record.ok:
        cell = f" (cell {record.failed_cell})" if record.failed_cell is not None else ""
        print(f"  FAILED{cell}: {record.error}", file=sys.stderr)
    if result.missing:
        print(f"  the recipe did not write {', '.join(result.missing)}", file=sys.stderr)
    print(f"executed notebook: {result.notebook}")
    return 0 if result.ok else 1


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


def _cmd_ingest(args: argparse.Namespace) -> int:
    from twinkles.catalogs import CatalogDatabase, IngestConfig, IngestTask

    run = load_run(args.run_dir)
    database = CatalogDatabase.for_run(run, args.db_url)
    quiet = args.quiet or not sys.stderr.isatty()

    def progress(unit: str, done: int, total: int) -> None:
        if not quiet:
            print(f"\r  {done}/{total} {unit:<16}", end="", file=sys.stderr, flush=True)

    result = IngestTask(IngestConfig(force=args.force, truth=not args.no_truth)).run(
        run, database, progress=progress
    )
    if not quiet:
        print(file=sys.stderr)
    rows = ", ".join(f"{n} {t}" for t, n in result.rows.items() if n)
    print(
        f"{run.config.name} -> {database.display_url}: {len(result.ingested)} units ingested "
        f"({rows or 'no rows'}), {len(result.skipped)} unchanged, in {result.seconds:.1f} s"
    )
    if result.missing:
        print(f"not processed (nothing to ingest): {', '.join(result.missing)}")
    for unit, message in result.failures.items():
        print(f"failed {unit}: {message}", file=sys.stderr)
    return 0 if result.ok else 1


def _object_id(text: str) -> int:
    from twinkles.catalogs.queries import validate_object_id

    try:
        return validate_object_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _filter_name(text: str) -> str:
    from twinkles.catalogs.queries import validate_filter

    try:
        return validate_filter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_lightcurve(args: argparse.Namespace) -> int:
    from twinkles.catalogs import CatalogDatabase
    from twinkles.catalogs.queries import light_curve

    run = load_run(args.run_dir)
    database = CatalogDatabase.for_run(run, args.db_url, create=False)
    table = light_curve(database, run.config.name, args.object_id, args.dia, args.filter)
    kind = "DIAObject" if args.dia else "Object"
    if len(table) == 0:
        print(f"{kind} {args.object_id} has no forced photometry in run {run.config.name}")
        return 1
    shown = ["ccdVisitId", "filterName", "expMidptMJD", "psFlux", "psFluxErr"]
    shown += [c for c in table.colnames if c.startswith("flag_")]
    table[shown].pprint_all()
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from twinkles.files import atomic_path
        from twinkles.plotting import plot_light_curve

        fig, ax = plt.subplots(figsize=(8, 4))
        plot_light_curve(
            ax,
            table["expMidptMJD"],
            table["psFlux"],
            table["psFluxErr"],
            table["filterName"],
            title=f"{run.config.name}: {kind} {args.object_id}",
        )
        fig.tight_layout()
        with atomic_path(args.plot) as tmp:
            fig.savefig(tmp, dpi=120, format=args.plot.rsplit(".", 1)[-1])
        plt.close(fig)
        print(f"plot: {args.plot}")
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

    p = sub.add_parser(
        "ingest-images",
        help="check and ingest an external run's eimages, reference catalog and truth",
    )
    p.add_argument("config", help="run configuration with inputs.source: external")
    p.set_defaults(func=_cmd_ingest_images)

    p = sub.add_parser("run", help="run the pipeline's recipes for a run")
    p.add_argument("config", help="run configuration (runs/<name>.yaml) or run directory")
    p.add_argument("--executor", choices=["local", "slurm"], help="override executor.kind")
    p.add_argument("--steps", help="only these steps, comma-separated")
    p.add_argument("--force", action="store_true", help="rerun even what is up to date")
    p.add_argument("--only-failed", action="store_true", help="rerun only failed and blocked")
    p.add_argument("--visits", type=int, nargs="+", help="only these visits (per-visit steps)")
    p.add_argument("--jobs", "-j", type=int, help="local executor: CPUs to use")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="what ran, what failed and where, what is left")
    p.add_argument("run_dir", help="run directory (runs/<name>) or configuration")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("report", help="throughput, CPU hours, efficiency, success, memory")
    p.add_argument("run_dir", help="run directory (runs/<name>) or configuration")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("note", help="build the run's DESC Note (HTML, PDF) and run browser")
    p.add_argument("run_dir", help="run directory (runs/<name>) or configuration")
    p.add_argument("--source", help="the Note's source folder (default: docs/note)")
    p.add_argument("--no-pdf", action="store_true", help="HTML only")
    p.set_defaults(func=_cmd_note)

    p = sub.add_parser("publish", help="copy a finished run's report, metrics and Note to DEST")
    p.add_argument("run_dir", help="run directory (runs/<name>) or configuration")
    p.add_argument("dest", help="folder to write, e.g. docs/results/<name>")
    p.add_argument("--no-pdf", action="store_true", help="publish without the Note's PDF")
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("ingest", help="ingest a run's catalogs into the catalog database")
    p.add_argument("run_dir", help="run directory (runs/<name>) or configuration")
    p.add_argument("--db-url", help="SQLAlchemy URL (default: database.url or catalogs.db)")
    p.add_argument("--force", action="store_true", help="re-ingest unchanged units too")
    p.add_argument("--no-truth", action="store_true", help="leave the truth tables out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("lightcurve", help="an Object's (or DIAObject's) light curve")
    p.add_argument("run_dir", help="run directory (runs/<name>) or configuration")
    p.add_argument("object_id", type=_object_id, help="objectId (diaObjectId with --dia)")
    p.add_argument("--dia", action="store_true", help="DiaForcedSource instead of ForcedSource")
    p.add_argument("--filter", type=_filter_name, help="only this band (ugrizy)")
    p.add_argument("--plot", help="also plot it per band to this file (.png, .pdf, .svg)")
    p.add_argument("--db-url", help="SQLAlchemy URL (default: database.url or catalogs.db)")
    p.set_defaults(func=_cmd_lightcurve)

    p = sub.add_parser("recipe", help="the cookbook's recipes")
    recipe_sub = p.add_subparsers(dest="recipe_command", required=True)
    p = recipe_sub.add_parser("show", help="a recipe's parameter contract")
    p.add_argument("name", help="step or recipe name (e.g. simulate_visit)")
    p.set_defaults(func=_cmd_recipe_show)
    p = recipe_sub.add_parser(
        "run",
        help="execute one step's recipe on one data id, outside the workflow, with provenance",
    )
    p.add_argument("config", help="run configuration (runs/<name>.yaml) or run directory")
    p.add_argument("step", help="pipeline step (e.g. process_eimage)")
    p.add_argument("--visit", type=int, help="the visit (obsHistID) of a per-visit step")
    p.add_argument("--data-id", help="any other data id, as the status shows it (filter=r)")
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="set a parameter (VALUE read as YAML); repeatable",
    )
    p.add_argument("--recipe", help="an edited copy of the recipe to execute instead")
    p.add_argument("--output", help="executed notebook (default <run>/manual/<step>/<id>.ipynb)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel (make lab's: twinkles)")
    p.set_defaults(func=_cmd_recipe_run)

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
