"""``ptq``: the command line, with converter_lite's own flag names.

Bad input ends in one line on stderr and exit code 2; the full traceback of an unexpected
failure is shown only with PTQ_DEBUG=1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

# The terminal shows our summary; Prefect's per-run INFO lines still reach the API and the UI.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

import ptqflow  # noqa: E402,F401  (applies the offline Prefect settings before anything imports Prefect)
from ptq_core.errors import PtqError  # noqa: E402

SUPPORTED_FMK = ("ONNX",)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        raise PtqError(f"{message} (see 'ptq {self.prog.split()[-1]} --help')" if " " in self.prog else message)


def _flag(parser: argparse.ArgumentParser, camel: str, kebab: str, **kw) -> None:
    parser.add_argument(*dict.fromkeys((f"--{camel}", f"--{kebab}")), **kw)  # --fmk once, not twice


def _add_converter_lite_flags(conv: argparse.ArgumentParser) -> None:
    """converter_lite's other documented flags: --optimize acts, the rest are accepted with a notice."""
    from ptq_core.config.flags import FOREIGN_FLAGS, OPTIMIZE_CHOICES

    conv.add_argument("--optimize", choices=OPTIMIZE_CHOICES, default=None,
                      help="converter_lite's optimization level; ascend_oriented / gpu_oriented select the ASCEND / "
                           "NVGPU target rules when the config sets no target_device")
    group = conv.add_argument_group("converter_lite flags accepted with a notice (they do not apply to ONNX output)")
    for flag in FOREIGN_FLAGS:
        group.add_argument(f"--{flag.camel}", dest=f"foreign_{flag.camel}", default=None,
                           metavar="{" + ",".join(flag.choices) + "}" if flag.choices else "VALUE",
                           choices=flag.choices or None, help=f"ignored: {flag.why}")


def foreign_flag_values(args) -> dict[str, str | None]:
    from ptq_core.config.flags import FOREIGN_FLAGS

    return {flag.camel: getattr(args, f"foreign_{flag.camel}", None) for flag in FOREIGN_FLAGS}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ptq", description="Post-training quantization of ONNX models with converter_lite configs.",
                     allow_abbrev=False)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    conv = sub.add_parser("convert", help="quantize a model (converter_lite flags)", allow_abbrev=False)
    _flag(conv, "fmk", "fmk", default="ONNX", help="source framework; only ONNX")
    _flag(conv, "modelFile", "model-file", dest="model_file", required=True, help="input .onnx model")
    _flag(conv, "outputFile", "output-file", dest="output_file", required=True,
          help="output path; .onnx is added when missing")
    _flag(conv, "configFile", "config-file", dest="config_file", required=True, help="converter_lite INI config")
    _flag(conv, "inputShape", "input-shape", dest="input_shape", default="",
          help='shapes for dynamic inputs, e.g. "input:1,3,48,320;mask:1,128"')
    _flag(conv, "inputDataFormat", "input-data-format", dest="input_data_format", default=None,
          choices=("NCHW", "NHWC"), help="layout of 4-D calibration BIN files (default: NCHW, said in a notice)")
    _add_converter_lite_flags(conv)
    conv.add_argument("--dask-address", "--daskAddress", dest="dask_address",
                      default=os.environ.get("PTQFLOW_DASK_ADDRESS") or None,
                      help="scheduler of an existing Dask cluster for calibration statistics "
                           "(default: $PTQFLOW_DASK_ADDRESS, else a local cluster on 127.0.0.1)")
    conv.add_argument("--max-drop", "--maxDrop", dest="max_drop", type=_max_drop, default=None, metavar="X",
                      help="FULL_QUANT: keep the most damaging nodes in FP32 until 1 - mean output cosine on the "
                           "calibration set is at most X, in [0, 1] (overrides [ptqflow] max_drop)")
    conv.add_argument("--no-flow", action="store_true",
                      help="run the steps directly in this process, without Prefect or Dask")
    _add_sweep(sub)
    _add_serve(sub)
    _add_server(sub)
    _add_report(sub)
    _add_cache(sub)
    sub.add_parser("version", help="print the version")
    return parser


def _add_cache(sub) -> None:
    cache = sub.add_parser("cache", help="show what ptqflow's caches hold; --prune to shrink them safely",
                           allow_abbrev=False)
    cache.add_argument("--prune", action="store_true",
                       help="delete cached files, oldest first (with the Prefect result records that mention them, so "
                            "the tasks rerun instead of failing); never the latency guard's timing table, never "
                            "anything used in the last 10 minutes")
    cache.add_argument("--max-size", "--maxSize", dest="max_size", metavar="SIZE",
                       help="with --prune: shrink the cache to at most SIZE, e.g. 2GB (0 empties it)")
    cache.add_argument("--older-than", "--olderThan", dest="older_than", metavar="AGE",
                       help="with --prune: delete everything older than AGE, e.g. 30d, 12h")


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="quantize at every point of a config grid; Pareto table, plot, best .cfg",
                        allow_abbrev=False)
    _flag(sw, "fmk", "fmk", default="ONNX", help="source framework; only ONNX")
    _flag(sw, "modelFile", "model-file", dest="model_file", required=True, help="input .onnx model")
    _flag(sw, "configFile", "config-file", dest="config_file", required=True, help="base converter_lite config")
    sw.add_argument("--grid", required=True,
                    help='JSON or TOML file (or inline JSON) mapping section.key to a list of values, e.g. '
                         '{"mixed_bit_weight_quant_param.init_scale": [0.01, 0.02, 0.05]}')
    _flag(sw, "outputDir", "output-dir", dest="output_dir", required=True,
          help="folder for point_<k>.onnx/.cfg, sweep.parquet, pareto.svg, best.cfg")
    _flag(sw, "inputShape", "input-shape", dest="input_shape", default="", help="shapes for dynamic inputs")
    _flag(sw, "inputDataFormat", "input-data-format", dest="input_data_format", default=None,
          choices=("NCHW", "NHWC"), help="layout of 4-D calibration BIN files (default: NCHW, said in a notice)")
    sw.add_argument("--dask-address", "--daskAddress", dest="dask_address",
                    default=os.environ.get("PTQFLOW_DASK_ADDRESS") or None,
                    help="existing Dask scheduler for FULL_QUANT statistics")
    sw.add_argument("--parallel", type=int, default=2, help="points quantized at once (default 2)")
    sw.add_argument("--pick", choices=("size", "latency", "cosine"), default="size",
                    help="best point among the Pareto points within --tolerance of the best cosine: the smallest "
                         "(default), the fastest, or the most accurate")
    sw.add_argument("--tolerance", type=float, default=0.002, help="cosine tolerance for --pick (default 0.002)")
    sw.add_argument("--latency-runs", type=int, default=20, help="timed onnxruntime runs per point (default 20)")


def _add_report(sub) -> None:
    rp = sub.add_parser("report", help="rank the nodes of a debug folder (debug_info_save_path) by quantization "
                        "damage and propose a skip_quant_node line", allow_abbrev=False)
    rp.add_argument("folder", metavar="DIR", help="the debug_info_save_path of a conversion")
    rp.add_argument("--top", type=int, default=15, help="rows to print (default 15)")


def _max_drop(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r} must be a number in [0, 1] (1 - output cosine, e.g. 0.01)")
    return value


def _add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="start a local Prefect server (127.0.0.1) with the UI and serve the deployments",
                        allow_abbrev=False)
    sv.add_argument("--port", type=int, default=4200, help="Prefect server port on 127.0.0.1 (default 4200)")
    sv.add_argument("--watch", default="", help="folder of *.onnx + sibling .cfg to re-quantize on a schedule")
    sv.add_argument("--cron", default="*/10 * * * *", help='schedule of the watch deployment (default "*/10 * * * *")')
    sv.add_argument("--output-dir", "--outputDir", dest="output_dir", default="",
                    help="where the watcher writes models (default: <watch>/quantized)")
    sv.add_argument("--api-url", default="", help="use this running Prefect API instead of starting a server")


def _add_server(sub) -> None:
    srv = sub.add_parser("server", help="the resident local Prefect server that flow runs start and reuse",
                         allow_abbrev=False)
    srv.add_argument("action", choices=("start", "stop", "status"),
                     help="start it now, stop it (and every process of it), or say whether it runs and where")


def _server(args) -> int:
    from ptqflow import resident

    if args.action == "stop":
        state = resident.stop()
        print("resident Prefect server stopped; no process of it is left" if state else
              "no resident Prefect server for this home")
        return 0
    if args.action == "start":
        if not resident.enabled():
            raise PtqError("PREFECT_API_URL is set (or PTQFLOW_RESIDENT_SERVER=0): flow runs use that, "
                           "not a resident server")
        state = resident.start()
    else:
        state = resident.running()
        if state is None:
            print("no resident Prefect server is running for this home; the next flow run starts one")
            return 0
    print(f"Prefect dashboard: {state.url} (API {state.api_url}; supervisor pid {state.pid}; stops after "
          f"{state.idle_s / 60:g} min idle; log {resident.folder() / 'server.log'})")
    return 0


def _validate_paths(args) -> None:
    if args.fmk not in SUPPORTED_FMK:
        raise PtqError(f"--fmk={args.fmk}: ptqflow converts ONNX models only; use --fmk=ONNX")
    model = Path(args.model_file)
    if not model.exists():
        raise PtqError(f"--modelFile={args.model_file}: file not found")
    if model.is_dir():
        raise PtqError(f"--modelFile={args.model_file}: is a folder, not an .onnx file")


def _convert(args) -> int:
    from ptq_core.config.flags import foreign_notices
    from ptq_core.convert import resolve_config
    from ptq_core.data.input_layout import layout_fact, shapes_from_images
    from ptq_core.onnxgraph.preflight import check_output
    from ptq_core.onnxgraph.save import output_file
    from ptq_core.onnxgraph.session import InputOptions, input_specs
    from ptq_core.summary import already_quantized_text
    from ptqflow import report

    cfg = resolve_config(args.config_file, args.max_drop, args.optimize)  # validated before the model is read
    inputs = InputOptions.from_flags(args.input_shape, args.input_data_format)
    _validate_paths(args)
    check_output(args.output_file, args.model_file)  # before any work: nothing to lose at the end
    if not args.no_flow:
        from ptqflow.resident import start_early

        start_early()  # the resident server boots while the model is checked and Prefect imported
    from ptqflow._phases import measure

    with measure("work"):
        info = _precheck_model(args.model_file, cfg)
        input_specs(info.inputs, inputs.shape_map)  # --inputShape names real inputs of the right rank
        inputs = shapes_from_images(cfg, info.inputs, inputs)  # images of different sizes fail here, before any work
    layout = None if inputs.format_given else layout_fact(cfg, info.inputs, inputs)
    if info.quantized_ops:
        report.notice(f"{args.model_file}: already quantized ({already_quantized_text(info)}); ptqflow quantizes "
                      "only the float weights left, and the summary counts them")
    for notice in foreign_notices(foreign_flag_values(args)) + list(cfg.notices) + ([layout] if layout else []):
        report.notice(notice)
    start = time.perf_counter()
    with report.layer_progress() as progress:
        if args.no_flow:
            from ptq_core.convert import convert_direct

            summary = convert_direct(args.model_file, args.config_file, args.output_file, inputs, progress,
                                     info=info, max_drop=args.max_drop, optimize=args.optimize)
        else:
            from ptqflow._guard import quiet_console, watch_children
            from ptqflow._progress import terminal
            from ptqflow.flows.quantize import quantize, run_tags
            from ptqflow.resident import in_use

            watch_children()  # Prefect's temporary server must not outlive a killed run
            quiet_console()
            _started_a_flow()
            with in_use(), terminal(progress), run_tags(args.model_file, args.config_file, args.max_drop):
                summary = quantize(str(args.model_file), str(args.config_file), str(args.output_file),
                                   args.input_shape, args.input_data_format, args.dask_address, args.max_drop,
                                   args.optimize)
    if args.no_flow:
        summary = replace(summary, wall_time_s=time.perf_counter() - start)
    else:  # what the user waited for, split so that a slow start is not taken for a slow quantization
        from ptqflow import _phases

        wall = _phases.since_process_start()
        summary = replace(summary, wall_time_s=wall, time_split=_phases.split(wall))
    report.print_summary(summary)
    print(f"wrote {output_file(args.output_file)}")
    from ptqflow.debug_report import print_debug_location

    print_debug_location(getattr(summary, "debug", None))
    return 0


def _sweep(args) -> int:
    """Everything the user gave is checked (grid, every point's config, the model) before the flow starts."""
    from ptq_core.config import check_runnable
    from ptq_core.convert import resolve_config
    from ptq_core.sweep import expand, load_grid
    from ptqflow import report

    if args.parallel < 1:
        raise PtqError(f"--parallel={args.parallel}: must be at least 1")
    if args.latency_runs < 1:
        raise PtqError(f"--latency-runs={args.latency_runs}: must be at least 1")
    if not 0 <= args.tolerance < 1:
        raise PtqError(f"--tolerance={args.tolerance}: must be in [0, 1)")
    grid = load_grid(args.grid)
    cfg = resolve_config(args.config_file)
    points = expand(Path(args.config_file).read_text(encoding="utf-8"), str(args.config_file), grid)
    for point in points:
        check_runnable(point.config)
    _validate_paths(args)
    from ptqflow.resident import start_early

    start_early()
    _precheck_model(args.model_file, cfg)
    for notice in cfg.notices:
        report.notice(notice)
    from prefect.task_runners import ThreadPoolTaskRunner

    from ptqflow.flows.sweep import sweep, sweep_tags
    from ptqflow.resident import in_use

    flow = sweep.with_options(task_runner=ThreadPoolTaskRunner(max_workers=args.parallel))
    _started_a_flow()
    with in_use(), sweep_tags(args.model_file, args.config_file, args.grid):
        result = flow(str(args.model_file), str(args.config_file), args.grid, str(args.output_dir), args.input_shape,
                      args.input_data_format, args.dask_address, args.tolerance, args.pick, args.latency_runs)
    report.print_sweep(result)
    return 0


def _started_a_flow() -> None:
    global _flow_started
    _flow_started = True


def _precheck_model(model_file: str, cfg):
    """Read the model once, cheaply, so that bad models and unknown skip names fail before the flow starts."""
    from ptq_core.onnxgraph.sites import analyse_model, check_skip_nodes

    info = analyse_model(model_file)
    check_skip_nodes(info, cfg.common.skip_quant_node, cfg.source)
    return info


def main(argv: list[str] | None = None) -> int:
    try:
        from ptqflow.runner import delegate

        code = delegate(sys.argv[1:] if argv is None else argv)  # the resident server's warm runner, if it can
        return code if code is not None else run_here(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C (or SIGTERM) outside _run's own handler: start-up, hand-over, settle
        return interrupted(exc)


def interrupted(exc: KeyboardInterrupt) -> int:
    """The one line an interrupt outside a run's own handler gets, and its exit code."""
    terminated = getattr(exc, "exit_code", None)
    print(f"ptq: {'terminated' if terminated else 'interrupted'}; nothing was written", file=sys.stderr)
    return terminated or 130


def run_here(argv: list[str] | None = None) -> int:
    """``ptq`` in this process (the warm runner's child calls this too)."""
    from ptq_core.heap import limit_heap_arenas

    limit_heap_arenas()
    from ptqflow._guard import sigterm_as_interrupt

    with sigterm_as_interrupt():  # a kill unwinds like Ctrl-C: clusters closed, temp files removed
        return _main(argv)


_flow_started = False  # set when this call starts a flow: only then is there anything to let the server record


def _main(argv: list[str] | None) -> int:
    from ptqflow._settle import now

    global _flow_started
    _flow_started = False
    since = now()
    code = _run(argv)
    if _flow_started and code not in (130, 143):  # a flow ran here, and no one asked us to hurry
        from ptqflow._settle import settle_task_runs

        settle_task_runs(since)
    return code


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "version" or args.version:
            print(f"ptqflow {ptqflow.__version__}")
            return 0
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "serve":
            from ptqflow._guard import watch_children
            from ptqflow.deployments.serve import serve_command

            watch_children()  # its server and serving process live in their own groups; SIGKILL must not orphan them
            return serve_command(args)
        if args.command == "server":
            return _server(args)
        if args.command == "cache":
            from ptqflow.cache_admin import cache_command

            if (args.max_size or args.older_than) and not args.prune:
                raise PtqError("--max-size and --older-than only act with --prune (ptq cache --prune --max-size 2GB)")
            return cache_command(args.prune, args.max_size, args.older_than)
        if args.command == "report":
            from ptqflow.debug_report import report_command

            return report_command(args.folder, args.top)
        if args.command != "convert":
            parser.print_help()
            return 2
        return _convert(args)
    except PtqError as exc:
        print(f"ptq: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        terminated = getattr(exc, "exit_code", None)
        print(f"ptq: {'terminated' if terminated else 'interrupted'}; nothing was written", file=sys.stderr)
        return terminated or 130
    except Exception as exc:  # a bug, not bad input: one line unless asked for more
        if interrupted_inside(exc):  # Ctrl-C that a library caught and wrapped (pydantic while Prefect starts)
            print("ptq: interrupted; nothing was written", file=sys.stderr)
            return 130
        if os.environ.get("PTQ_DEBUG"):
            raise
        print(f"ptq: internal error: {type(exc).__name__}: {exc} (rerun with PTQ_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


def interrupted_inside(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is what really ended the run: raised in a library's callback and
    re-raised wrapped (pydantic's serializer turns it into PydanticSerializationError, naming it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
