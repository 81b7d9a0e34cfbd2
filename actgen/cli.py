"""The `actgen` command line: argparse in front of the library, no logic of its own."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

DEFAULT_SPECS = Path("specs")
DEFAULT_OUT = Path("actgen") / "ops"
#: the built-in library: its generated package, and its specs beside the actgen package in a
#: checkout of its repository
CATALOGUE_OPS = Path(__file__).resolve().parent / "ops"
CATALOGUE_SPECS = CATALOGUE_OPS.parents[1] / "specs"


def _in_repository_root() -> bool:
    """Whether the current directory is actgen's repository root (specs/ and the actgen package):
    where a build with no spec files regenerates the built-in library."""
    return DEFAULT_SPECS.is_dir() and (DEFAULT_OUT.parent / "__init__.py").is_file()


def _cmd_build(args) -> int:
    import shlex

    from .build import build
    from .spec import SpecError

    specs = args.specs or [DEFAULT_SPECS]
    if not args.specs and not _in_repository_root():
        print("actgen build: no spec files given, and this is not actgen's repository root (where a build "
              "regenerates the built-in library); give spec files and --out DIR", file=sys.stderr)
        return 2
    if args.out is not None and not args.out.strip():
        raise SpecError(["<args>:0: --out: is empty (leave it out for the built-in library's actgen/ops)"])
    whole_catalogue = [Path(s).resolve() for s in specs] == [DEFAULT_SPECS.resolve()] and _in_repository_root()
    if args.out is None and not whole_catalogue:
        # (the default out is the built-in library, from all of specs/: a build of other specs
        # into it would remove its activations)
        raise SpecError(["<args>:0: --out: needed with spec files (without it, `actgen build` regenerates the "
                         "built-in library actgen/ops from all of specs/)"])
    if args.jobs < 1:
        raise SpecError([f"<args>:0: --jobs: must be at least 1, got {args.jobs}"])
    out = Path(args.out) if args.out is not None else DEFAULT_OUT
    result = build([Path(s) for s in specs], out, check=args.check, jobs=args.jobs)
    stale = result.changed + result.removed
    if args.check:
        if stale:
            again = shlex.join(["actgen", "build", *args.specs, *(["--out", args.out] if args.out is not None else [])])
            print(f"{out}: stale ({', '.join(stale)}); run `{again}`", file=sys.stderr)
            return 1
        print(f"{out}: up to date")
        return 0
    print(f"{out}: {len(result.changed)} written, {len(result.removed)} removed" if stale else f"{out}: up to date")
    return 0


def _load(args):
    from .spec import SpecError, load_specs

    if args.specs:
        return load_specs([Path(s) for s in args.specs])
    default = DEFAULT_SPECS if DEFAULT_SPECS.is_dir() else CATALOGUE_SPECS      # (elsewhere: the built-in library's)
    if not default.is_dir():
        raise SpecError(["<args>:0: --specs: no specs/ here (run it in the repository root, or give --specs DIR)"])
    return load_specs([default])


def _cmd_list(args) -> int:
    for s in _load(args):
        kind = "gated" if s.gated else "learnable" if s.params else ""
        print(f"{s.name:<24} {s.class_name:<24} {kind:<9} {' '.join(s.formula.split())}")
    return 0


def _cmd_show(args) -> int:
    from .build import derive_spec
    from .codegen.module import _math_lines

    specs = {s.name: s for s in _load(args)}
    if args.name not in specs:
        print(f"actgen show: unknown activation '{args.name}' (known: {', '.join(sorted(specs))})", file=sys.stderr)
        return 2
    s = specs[args.name]
    d = derive_spec(s)
    print(f"{s.name} ({s.class_name}) from {s.source}")
    if s.doc:
        print(s.doc.strip())
    print(f"formula: {' '.join(s.formula.split())}")
    for p in s.params:
        print(f"param {p.name}: init {p.init}{', per channel' if p.per_channel else ''}")
    for c in s.constants:
        print(f"constant {c.name} = {c.default}")
    for line in _math_lines(d):
        print("  " + line)
    if args.source:
        from .codegen.module import render_module

        print(f"generated source ({s.name}.py):")
        print(render_module(d), end="")
        return 0
    built = (DEFAULT_OUT if DEFAULT_SPECS.is_dir() else CATALOGUE_OPS) / (s.name + ".py")
    if not args.specs and built.is_file():      # (the built-in library: specs/ -> actgen/ops/)
        print(f"generated source: {built} (`--source` prints it)")
    else:
        print(f"generated source: `--source` prints it; `actgen build SPECS --out DIR` writes DIR/{s.name}.py")
    return 0


def _cmd_plot(args) -> int:
    from .catalogue import plot

    specs = {s.name: s for s in _load(args)}
    if args.name not in specs:
        print(f"actgen plot: unknown activation '{args.name}' (known: {', '.join(sorted(specs))})", file=sys.stderr)
        return 2
    path = Path(args.out) if args.out else Path(f"{args.name}.png")
    problem = _image_path_problem(path)
    if problem:
        print(f"actgen plot: --out {path}: {problem}", file=sys.stderr)
        return 2
    try:
        print(plot(specs[args.name], path))
    except OSError as exc:      # (a directory that is not writable: /proc, /sys, permissions)
        print(f"actgen plot: --out {path}: cannot write there ({exc.strerror or exc})", file=sys.stderr)
        return 2
    return 0


def _image_path_problem(path: Path) -> str | None:
    """Why a plot cannot be written to path (an image format matplotlib writes, in a
    directory that is one or can be made), or None."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"}      # (pgf: LaTeX code, run through xelatex)
    if path.suffix.lstrip(".").lower() not in formats:
        return f"not an image file name (one of {', '.join('.' + f for f in sorted(formats))})"
    if path.is_dir():
        return "is a directory"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is not a directory"
    return None


def _cmd_docs(args) -> int:
    # the accuracy table runs the Triton kernels on CPU tensors, under Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from .catalogue import write_docs

    specs = args.specs[0] if args.specs else DEFAULT_SPECS
    if not Path(specs).is_dir():
        print("actgen docs: no specs/ here (run it in the repository root, or give --specs DIR)" if not args.specs
              else f"actgen docs: --specs {specs}: not a directory of specs", file=sys.stderr)
        return 2
    if not args.step > 0 or not math.isfinite(args.step):
        print(f"actgen docs: --step {args.step}: must be a positive number", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"actgen docs: --jobs {args.jobs}: must be at least 1", file=sys.stderr)
        return 2
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    written = write_docs(Path(specs), Path(args.out), accuracy=not args.no_accuracy, plots=not args.no_plots,
                         step=args.step, jobs=args.jobs, log=log)
    for path in written:
        if path.suffix == ".md":
            print(path)
    return 0


def _cmd_demo(args) -> int:
    from .demo import main as demo_main

    return demo_main()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the suite parses its own options (see actgen/bench.py)
        from .bench import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="actgen", description="Compile activation formulas into fused Triton/torch ops.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="generate a package from spec files (default: specs/ -> actgen/ops/)")
    p.add_argument("specs", nargs="*", help="spec files or directories")
    p.add_argument("--out", help="output package directory (its base name is the package name)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the output is stale")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes compiling the specs (default: the CPU count)")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("demo", help="a formula in, its derivatives out, the generated op checked against torch")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("list", help="list the activations in the specs")
    p.add_argument("--specs", nargs="*", help="spec files or directories (default: specs/)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", help="show one activation: formula, derivatives, generated source")
    p.add_argument("name")
    p.add_argument("--specs", nargs="*", help="spec files or directories (default: specs/)")
    p.add_argument("--source", action="store_true", help="print the generated module's source")
    p.set_defaults(func=_cmd_show)

    sub.add_parser("bench", add_help=False,
                   help="benchmark the ops against torch eager, torch's kernels, torch.compile and the roofline "
                        "(`actgen bench --help` for its options)")

    p = sub.add_parser("plot", help="draw f and f' of one activation over [-6, 6] into a PNG")
    p.add_argument("name")
    p.add_argument("--out", help="output PNG (default: NAME.png)")
    p.add_argument("--specs", nargs="*", help="spec files or directories (default: specs/)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("docs", help="generate docs/catalogue.md, docs/accuracy.md and docs/plots/ from the specs")
    p.add_argument("--out", default="docs", help="output folder (default: docs)")
    p.add_argument("--specs", nargs=1, help="spec directory (default: specs/)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy table (minutes)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--step", type=float, default=0.01, help="accuracy grid step on [-20, 20] (default: 0.01)")
    p.add_argument("--jobs", type=int, default=1, help="processes for the accuracy table (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_docs)

    args = parser.parse_args(argv)
    from .spec import SpecError

    try:
        return args.func(args)
    except SpecError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except BrokenPipeError:  # `actgen list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
