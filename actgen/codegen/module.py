"""The generated module: header, eager torch fallback, Triton kernels, Function, Module."""
from __future__ import annotations

import hashlib
import math
import re

import sympy

from ..derive import (COSTLY_CALLS, Block, CappedExp, Derivation, LimitAtInf, LinearSums, Saturate, ScaledInput, draw_lines,
                      has_guards, linear_param_sums)
from ..native import NativeMatch
from ..native import describe as describe_native
from ..native import match as native_match
from ..precision import float64_16bit, float64_notes
from ..printers import TorchPrinter, TritonPrinter
from ..printers.base import ATOM
from ..printers.workspace import WORKSPACE, workspace_statements
from ..version import COMPILER_VERSION
from .writer import Writer, escape_docstring

TILE_INDEX = "_offs, _mask, _ch, _rows, _cols = _tile(_M, _N, _C, BLOCK_M, BLOCK_N, CH_AXIS)"
NTH_TILE_INDEX = "_offs, _mask, _ch, _rows, _cols = _nth_tile(_it, _M, _N, _C, BLOCK_M, BLOCK_N, CH_AXIS)"
# the @triton.jit helpers of actgen.runtime.triton_lang a kernel may call (imported as _name)
KERNEL_HELPERS = ("tile", "nth_tile", "tile_channels", "row_offsets", "param_at", "partial_zeros", "in_tile", "store_partial",
                  "reduce_partial", "store_reduced", "not_finite", "narrow", "exp", "log1p", "erfc", "div", "div_bounded", "div_uniform", "clamp", "sigmoid", "softplus",
                  "sqrt", "sqrt_square_plus", "scaled_input", "inverse_scale", "limit_at_inf", "grown", "draw")


def op_key(d: Derivation) -> str:
    """Identifies the generated code: spec content + compiler version."""
    return hashlib.sha256(f"{COMPILER_VERSION}:{d.spec.sha256}".encode()).hexdigest()[:12]


def _math_lines(d: Derivation) -> list[str]:
    s = d.spec
    names = [*s.inputs, *(p.name for p in s.params)]
    width = max(len(f"df/d{n}") for n in names)
    lines = [f"{'f':<{width}} = {sympy.sstr(d.expr)}"]
    lines += [f"{'df/d' + n:<{width}} = {sympy.sstr(e)}" for n, e in d.first]
    return (lines + draw_lines(d.spec.expr) + _saturation_lines(d) + _scaling_lines(d) + _one_exponential_lines(d)
            + _float64_lines(d) + _native_lines(d))


def _native_lines(d: Derivation) -> list[str]:
    """Where the CPU fallback calls torch's own kernels (actgen.native)."""
    native = native_match(d.spec)
    return [""] + describe_native(native, d.spec.inputs[0]) if native else []


def _float64_lines(d: Derivation) -> list[str]:
    """Which direction is computed in float64, and why (actgen.precision)."""
    lines = float64_notes(d)
    return [""] + lines if lines else []


def _bound(b) -> str:
    v = abs(int(b))
    text = f"2**{v.bit_length() - 1}" if v >= 2 ** 17 else str(v)
    return "-" + text if b < 0 else text


def _output_atoms(d: Derivation, kind, written_out: bool = False, kernel: bool = False) -> list[tuple[str, set]]:
    """(label, atoms of `kind` it uses, through the temporaries) for f and each df/dvar, as the
    eager fallback (or with `kernel`, the kernels) computes them; with `written_out`, each atom
    with the temporaries in it replaced by what they stand for."""
    out = []
    blocks = (d.kernel_forward, d.kernel_backward) if kernel else (d.forward, d.backward)
    for block, label in zip(blocks, (lambda n: "f", lambda n: "df/d" + n[2:])):
        temps = dict(block.assignments)
        for name, expr in block.outputs:
            seen, todo, found = set(), [expr], set()
            while todo:
                e = todo.pop()
                found |= e.atoms(kind)
                for t in e.free_symbols & temps.keys() - seen:
                    seen.add(t)
                    todo.append(temps[t])
            if written_out:
                found = {_written_out(a, temps) for a in found}
            out.append((label(name), found))
    return out


def _written_out(e, temps):
    while e.free_symbols & temps.keys():
        e = e.xreplace(temps)
    return e


def _saturation_lines(d: Derivation) -> list[str]:
    """Where an output clamps an input (actgen.derive.Saturate): beyond the bounds the output
    is at its limit in that input, to double precision."""
    lines = []
    for label, found in _output_atoms(d, Saturate):
        for sat in sorted(found, key=sympy.default_sort_key):
            u, lo, hi = sat.args
            side = [f"{u} <= {_bound(lo)}"] if lo.is_finite else []
            side += [f"{u} >= {_bound(hi)}"] if hi.is_finite else []
            lines.append(f"{label}: {u} is clamped where {' or '.join(side)} "
                         f"(there {label} no longer changes with {u}, to double precision).")
    return [""] + lines if lines else []


def _scaling_lines(d: Derivation) -> list[str]:
    """Which outputs compute ratios of polynomials in an input scaled (actgen.derive.rational_form)."""
    uses = _output_atoms(d, ScaledInput)
    lines = []
    for u in d.inputs:
        labels = [label for label, found in uses if ScaledInput(u) in found]
        if labels:
            lines.append(f"{', '.join(labels)}: ratios of polynomials in {u} are computed in v = {u}/s and w = 1/s, "
                         f"s the power of two above max(1, |{u}|), each polynomial divided by s to its degree "
                         "(exactly), so that none overflows where the ratio does not.")
    return [""] + lines if lines else []


def _one_exponential_uses(d: Derivation, kernel: bool) -> dict:
    """{u: labels of the outputs that are one ratio in e = exp(-|u|)} (actgen.derive.exp_rational_form)."""
    unclamped = lambda e: e.replace(lambda a: isinstance(a, Saturate), lambda a: a.args[0])    # said above
    branches = dict(_output_atoms(d, sympy.StrictLessThan, written_out=True, kernel=kernel))
    uses = {}
    for label, exps in _output_atoms(d, sympy.exp, written_out=True, kernel=kernel):
        below_zero = {unclamped(c.lhs) for c in branches[label] if isinstance(c, sympy.Rel) and c.rhs == 0}
        for a in exps:
            coeff, rest = (-unclamped(a.args[0])).as_coeff_Mul()
            u = coeff * rest.args[0] if isinstance(rest, sympy.Abs) else None
            # (a ratio of the params alone is a limit's value at a clamped input, not the output's form)
            if u is not None and coeff > 0 and u in below_zero and u.has(*d.inputs):
                uses.setdefault(u, []).append(label)
    return {u: list(dict.fromkeys(labels)) for u, labels in uses.items()}


def _one_exponential_lines(d: Derivation) -> list[str]:
    """Which outputs are one ratio in e = exp(-|u|): everywhere, or in the kernels alone."""
    both, kernels = _one_exponential_uses(d, False), _one_exponential_uses(d, True)
    # the calls an output keeps beside the ratio (logish': log1p of a sigmoid from the ratio's e)
    calls = dict(_output_atoms(d, sympy.Function, written_out=True, kernel=True))
    lines = []
    for u, labels in sorted(kernels.items(), key=lambda kv: sympy.default_sort_key(kv[0])):
        e = sympy.exp(-sympy.Abs(u))
        inside = {label for label in labels
                  if any(isinstance(c, COSTLY_CALLS) and c.has(e) for c in calls.get(label, ()))}
        shared = [label for label in labels if label in both.get(u, ())]
        for group, where in ((shared, ""), ([label for label in labels if label not in shared],
                                            " (in the Triton kernels; the eager fallback keeps its calls)")):
            for part, what in (([g for g in group if g not in inside], "one ratio of polynomials"),
                               ([g for g in group if g in inside], "its rational part one ratio of polynomials, and "
                                "a sigmoid inside another call from the same e,")):
                if part:
                    lines.append(f"{', '.join(part)}: {what} in e = exp(-|{u}|), with exp({u}) = e "
                                 f"where {u} < 0 and 1/e elsewhere: one exponential, and nothing overflows{where}.")
    return [""] + lines + _capped_lines(d) if lines else _capped_lines(d)


def _capped_lines(d: Derivation) -> list[str]:
    """Which outputs the CPU fast variant computes as capped ratios (actgen.derive.capped_ratio_form)."""
    lines = []
    for block, label in ((d.forward_fast, lambda n: "f"), (d.backward_fast, lambda n: "df/d" + n[2:])):
        caps = {a for _, e in ((*block.assignments, *block.outputs) if block else ()) for a in e.atoms(CappedExp)}
        if caps:
            u, hi32, hi64 = next(iter(caps)).args
            names = [label(n) for n, _ in block.outputs]
            lines.append(f"{', '.join(names)} on CPU chunks (the fast variant): one ratio of polynomials in "
                         f"E = exp(min({u}, {hi32})) ({hi64} in float64) - no branches; a value that is not "
                         f"finite there hands the chunk to the guarded function.")
    return [""] + lines if lines else []


#: The end of the first line of every file actgen writes into a package.
GENERATED_MARK = "DO NOT EDIT; regenerate with `actgen build`."


def is_generated(text: str) -> bool:
    """Whether a file's text is one actgen wrote: its first line a docstring's that says so
    (a file of the user's that mentions "DO NOT EDIT" is not)."""
    first = text.split("\n", 1)[0]
    return first.startswith('"""') and " generated by actgen " in first and first.endswith(GENERATED_MARK)


def _header(d: Derivation, w: Writer):
    s = d.spec
    source = s.source.replace("\\", "/").rsplit("/", 1)[-1]
    lines = [f"{s.name}: generated by actgen from {source}. {GENERATED_MARK}", ""]
    if s.doc:
        lines += [s.doc.strip(), ""]
    lines += ["Formula, as written:", "    " + " ".join(s.formula.split()), ""]
    if s.params:
        lines.append("Params: " + ", ".join(f"{p.name} (init {p.init!r}{', per channel' if p.per_channel else ''})" for p in s.params))
    if s.constants:
        lines.append("Constants: " + ", ".join(f"{c.name}={c.default!r}" for c in s.constants))
    if s.params or s.constants:
        lines.append("")
    lines += ["Derived (after stability rewrites):"] + [("    " + l) if l else "" for l in _math_lines(d)]
    w('"""' + escape_docstring("\n".join(lines)) + '\n"""')


def _block(w: Writer, block: Block, printer, out_prefix: str):
    """Temporaries, then one assignment per output (named out_prefix + output name); a
    temporary is known to the printer from then on (a tensor where computed from one, and
    by its definition)."""
    for sym, expr in block.assignments:
        w(f"{sym.name} = {printer.doprint(expr)}")
        printer.add_temporary(sym, expr)
    for name, expr in block.outputs:
        w(f"{out_prefix}{name} = {printer.doprint(expr)}")


def _tensor_names(d: Derivation) -> list[str]:
    """The symbols generated code holds as tensors, in the fallback and the kernels alike:
    inputs, draws and params (constants are numbers)."""
    return [*d.spec.inputs, *(r.name for r in d.draws), *(p.name for p in d.spec.params)]


def _shared_params(d: Derivation) -> list[str]:
    """The params a kernel loads as scalars: those that are not per-channel."""
    return [p.name for p in d.spec.params if not p.per_channel]


def _torch_function(w: Writer, d: Derivation, fname: str, doc: str, block: Block, outputs_as_tuple: bool, fast: bool = False,
                    checked: bool = False):
    """A fallback function; `fast`: the fast variant, on the workspace `_w` (its buffer count
    is returned); `checked`: it returns None where a value is not finite (as it does where it
    has a branch or a capped ratio)."""
    s = d.spec
    args = [*_tensor_names(d), *(c.name for c in s.constants)] + ([WORKSPACE] if fast else [])
    printer = TorchPrinter(_tensor_names(d), like=s.inputs[0], fast=fast)
    buffers = 0
    with w.indent(f"def {fname}({', '.join(args)}):"):
        w(f'"""{doc}"""')
        if fast:
            buffers = _workspace_block(w, d, block, printer)
        else:
            _block(w, block, printer, "_")
        names = [f"_{n}" for n, _ in block.outputs]
        result = (f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})") if outputs_as_tuple else names[0]
        # a select is exact where both branches are finite; else its value is NaN, which
        # reaches the outputs (conditions never depend on a select here, see derive)
        checked = fast and (checked or _has_branch(block) or _has_capped(block))
        w(f"return _rt.finite_or_none({result})" if checked else f"return {result}")
    w()
    w()
    return buffers


def _workspace_block(w: Writer, d: Derivation, block: Block, printer: TorchPrinter) -> int:
    """A block's statements as printed, rewritten onto the workspace (actgen.printers.workspace);
    the number of buffers they use."""
    statements = []
    for sym, expr in block.assignments:
        statements.append((sym.name, printer.doprint(expr)))
        printer.add_temporary(sym, expr)
    statements += [(f"_{name}", printer.doprint(expr)) for name, expr in block.outputs]
    chunked = [*d.spec.inputs, *(r.name for r in d.draws)]
    params = [p.name for p in d.spec.params]
    lines, buffers = workspace_statements(statements, chunked, params, [f"_{n}" for n, _ in block.outputs])
    for target, text in lines:
        w(f"{target} = {text}")
    return buffers


def _has_capped(block: Block) -> bool:
    """Whether a block has capped ratios (capped_ratio_form), which can overflow where the
    guarded functions do not."""
    return any(e.has(CappedExp) for _, e in (*block.assignments, *block.outputs))


def _has_branch(block: Block) -> bool:
    return any(e.has(sympy.Piecewise) for _, e in (*block.assignments, *block.outputs))


def fast_block(guarded: Block, fast: Block | None) -> tuple[Block | None, bool]:
    """(the block of the CPU fallback's fast variant, whether it runs on any input): the
    guarded block itself where it has no guards, else its guard-free form for finite inputs
    (actgen.derive.fast_variant), if it has one."""
    if not has_guards(e for _, e in (*guarded.assignments, *guarded.outputs)):
        return guarded, True
    return fast, False


def _fast_function(w: Writer, d: Derivation, fname: str, what: str, guarded: Block, fast: Block | None,
                   outputs_as_tuple: bool) -> tuple[int, bool] | None:
    """The variant the CPU fallback runs on a workspace (see fast_block): (its buffer count,
    whether it runs on any input), or None where there is none."""
    block, any_input = fast_block(guarded, fast)
    if block is None:
        return None
    doc = f"{what} on the workspace _w (CPU chunks)"
    if not any_input:
        doc += " for finite inputs: no NaN/inf guards"
    # a limit at +-inf the guarded block takes at a huge finite input too, where the value is
    # NaN (actgen.derive.LimitAtInf): the fast variant hands such a chunk over
    limits = not any_input and any(e.has(LimitAtInf) for _, e in (*guarded.assignments, *guarded.outputs))
    if _has_branch(block):
        doc += "; branches by float masks, None where a value is not finite (the guarded function runs then)"
    elif _has_capped(block) or limits:
        doc += "; None where a value is not finite (the guarded function runs then)"
    return _torch_function(w, d, fname, doc + ".", block, outputs_as_tuple, fast=True, checked=limits), any_input


def _kernel_args(d: Derivation) -> list[str]:
    args = []
    for p in d.spec.params:
        args.append(f"{p.name}_ptr")
        if p.per_channel:
            args.append(f"{p.name}_stride")
    return args


def _kernel_loads(w: Writer, d: Derivation):
    _input_loads(w, d)
    _param_loads(w, d)


def _input_loads(w: Writer, d: Derivation):
    offs = "_offs"
    if d.spec.gated:        # the inputs' rows are _S elements apart (the halves of one tensor), the tile's _N
        w("_in = _row_offsets(_offs, _rows, _cols, _M, _S)")
        offs = "_in"
    for name in d.spec.inputs:
        w(f"{name} = tl.load({name}_ptr + {offs}, mask=_mask, other=0.0).to(ACC)")


def _row_strides(d: Derivation, backward: bool) -> list[str]:
    """A gated op's kernel arguments for rows of its inputs (_S) and, in the backward, of their
    gradients (_SG) that are not _N apart: the halves of one tensor, read and written in place."""
    if not d.spec.gated:
        return []
    return ["_S", "_SG"] if backward else ["_S"]


def _param_loads(w: Writer, d: Derivation, ch: str = "_ch"):
    """The params at each element's channel ch (a (1,) param: stride 0)."""
    for p in d.spec.params:
        if p.per_channel:
            w(f"{p.name} = _param_at({p.name}_ptr, {ch}, {p.name}_stride, _N, CH_AXIS).to(ACC)")
        else:
            w(f"{p.name} = tl.load({p.name}_ptr).to(ACC)")


_CONSTEXPRS = "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH_AXIS: tl.constexpr, ACC: tl.constexpr, FAST: tl.constexpr"


def _jit(w: Writer, d: Derivation):
    # a new seed every call: no specialisation on its value (1, multiples of 16)
    w('@triton.jit(do_not_specialize=["_seed"])' if d.draws else "@triton.jit")


def _seed_args(d: Derivation) -> list[str]:
    return ["_seed"] if d.draws else []


def _training(d: Derivation) -> str:
    return ", TRAINING: tl.constexpr" if d.draws else ""


def _kernel_draws(w: Writer, block: Block, d: Derivation):
    """The draws _rk the block uses: U[0, 1) from the call's seed and the element's offset in
    training mode (the backward kernel draws the same values again), 1/2 in evaluation mode."""
    used = set().union(*(_free(block, e) for _, e in block.outputs))
    draws = [(k, r) for k, r in enumerate(d.draws) if r in used]
    if not draws:
        return
    with w.indent("if TRAINING:"):
        for k, r in draws:
            w(f"{r.name} = _draw(_seed, {k}, _offs).to(ACC)")
    with w.indent("else:"):         # in ACC: a bare 0.5 makes lo + (hi - lo)*0.5 float32 under the interpreter
        for _, r in draws:
            w(f"{r.name} = tl.full([], 0.5, ACC)")


def _forward_kernel(w: Writer, d: Derivation):
    s = d.spec
    consts = _constant_args(d)
    args = [f"{n}_ptr" for n in s.inputs] + _kernel_args(d) + ["_out_ptr", *consts, *_seed_args(d), "_M", "_N", "_C"]
    args += _row_strides(d, False)
    _jit(w, d)
    with w.indent(f"def _forward_kernel(\n    {', '.join(args)},\n    {_CONSTEXPRS}{_training(d)},\n):"):
        w(f'"""y = f({", ".join(s.inputs)}) over one BLOCK_M x BLOCK_N tile, computed in ACC (float32 or float64)."""')
        _constant_casts(w, d)
        w(TILE_INDEX)
        _kernel_loads(w, d)
        _kernel_draws(w, d.kernel_forward, d)
        _block(w, d.kernel_forward, TritonPrinter(_tensor_names(d), _shared_params(d)), "_")
        (_, expr), = d.kernel_forward.outputs
        if not any(sym.name in s.inputs for sym in _free(d.kernel_forward, expr)):
            w("_y = _y + tl.zeros([BLOCK_M, BLOCK_N], ACC)")
        w(f"tl.store(_out_ptr + _offs, {_stored('_y', '_out_ptr', d.wide_forward)}, mask=_mask)")
    w()


def _constant_args(d: Derivation) -> list[str]:
    """The kernels' arguments for the constants: each as three float32 numbers (Triton takes
    a Python float argument as float32), whose sum in float64 is the constant itself
    (actgen.runtime.launch.constant_parts)."""
    return [n for c in d.spec.constants for n in (c.name, f"_lo_{c.name}", f"_lo2_{c.name}")]


def _constant_casts(w: Writer, d: Derivation):
    """The constants as scalars of the compute type, summed from their parts: in float32 the
    first part alone (the others are below half its ULP), in float64 the constant exactly
    (0.1 was float32's 0.1 there).  Under the interpreter, where an argument stays a Python
    float, the cast is what makes the kernel's helpers and conditions of constants alone
    work as they do on a GPU."""
    for c in d.spec.constants:
        n = c.name
        w(f"{n} = tl.cast({n}, ACC) + tl.cast(_lo_{n}, ACC) + tl.cast(_lo2_{n}, ACC)")


def _free(block: Block, expr) -> set:
    """Free symbols of an output with temporaries expanded."""
    temps = dict(block.assignments)
    seen, todo = set(), list(expr.free_symbols)
    while todo:
        sym = todo.pop()
        if sym in temps:
            todo.extend(temps[sym].free_symbols)
        else:
            seen.add(sym)
    return seen


def _backward_kernel(w: Writer, d: Derivation):
    """One tile per program; with params and STEP, each program steps through _iters tiles and
    sums grad * df/dparam over them element by element in registers, then stores those sums
    per tile row or column (STEP is a constexpr: without it the loop compiles away, and so
    does its register cost).  Where the param gradients share terms (_linear_sums), it sums
    grad times each term instead and combines those sums once (_param_sums_by_basis)."""
    s = d.spec
    consts = _constant_args(d)
    args = ["_grad_ptr"] + [f"{n}_ptr" for n in s.inputs] + _kernel_args(d)
    args += [f"_d_{n}_ptr" for n in s.inputs]
    if s.params:
        args += ["_partials_ptr", "_n_partials"]
    args += [*consts, *_seed_args(d), "_M", "_N", "_C", *_row_strides(d, True)] + (["_iters"] if s.params else [])
    _jit(w, d)
    step = ", STEP: tl.constexpr" if s.params else ""
    with w.indent(f"def _backward_kernel(\n    {', '.join(args)},\n    {_CONSTEXPRS}, PARAM_GRAD: tl.constexpr{step}{_training(d)},\n):"):
        doc = "grad * df/dinput for every input"
        if s.params:
            doc += ("; with PARAM_GRAD, partial sums of grad * df/dparam for every param over this "
                    "program's tiles (one, or with STEP _iters tiles num_programs apart)")
        w(f'"""{doc}."""')
        _constant_casts(w, d)
        if not s.params:
            _backward_tile(w, d, TILE_INDEX)
            w()
            return
        lin = _linear_sums(d)
        if lin is not None:
            _param_sums_by_basis(w, d, lin)
            w()
            return
        _param_sums(w, d, "= _partial_zeros(BLOCK_M, BLOCK_N, ACC)")
        _program_params(w, d)
        with w.indent("for _it in range(_iters if STEP else 1):"):
            _backward_tile(w, d, NTH_TILE_INDEX)
            with w.indent("if PARAM_GRAD:"):
                _param_sums(w, d, "+= _in_tile(_g * _d_{}, _mask)")
        with w.indent("if PARAM_GRAD:"):
            for k, p in enumerate(s.params):
                w(f"_store_partial({_partials_at(k)}, _sum_{p.name}, BLOCK_M, BLOCK_N, CH_AXIS)")
    w()


def _program_params(w: Writer, d: Derivation):
    """The params once per program: a stepping program's tiles share their elements'
    channels (launch.param_grad_programs), so its first tile's are every tile's."""
    if any(p.per_channel for p in d.spec.params):
        w("_ch0 = _tile_channels(_M, _N, _C, BLOCK_M, BLOCK_N, CH_AXIS)")
    _param_loads(w, d, "_ch0")


def _param_sums(w: Writer, d: Derivation, update: str):
    """_sum_<param> <update> for every param ({} in update: the param's name)."""
    for p in d.spec.params:
        w(f"_sum_{p.name} {update.format(p.name)}")


def _linear_sums(d: Derivation) -> LinearSums | None:
    """The param gradients as sums over shared terms of the elements (derive.LinearSums),
    where they share some: more terms between the gradients than distinct ones.  (Where
    each gradient is one term of its own, summing it is what the kernel does anyway.)"""
    if not d.spec.params:
        return None
    lin = linear_param_sums(d.kernel_backward, [p.name for p in d.spec.params], [*d.inputs, *d.draws])
    return lin if sum(len(row) for row in lin.coefficients) > len(lin.bases) else None


def _needed(block: Block, exprs) -> Block:
    """block's assignments that exprs need (directly or through others), no outputs."""
    temps = dict(block.assignments)
    need, todo = set(), [sym for e in exprs for sym in e.free_symbols]
    while todo:
        sym = todo.pop()
        if sym in temps and sym not in need:
            need.add(sym)
            todo.extend(temps[sym].free_symbols)
    return Block(tuple((t, e) for t, e in block.assignments if t in need), ())


def _expanded(block: Block, e):
    """e with the block's temporaries written out."""
    for t, v in reversed(block.assignments):
        e = e.xreplace({t: v})
    return e


def _param_sums_by_basis(w: Writer, d: Derivation, lin: LinearSums):
    """The backward of an op whose param gradients are sums over shared terms b_j of the
    elements with coefficients c_pj of the params and constants (derive.LinearSums): per
    element, grad * df/dinput and one sum per term, sum(grad * b_j) (adaptive_mixture:
    relu(x), tanh(x) and x, for its three softmax weights); once per program, each param's
    partial sum is sum_j c_pj * sum(grad * b_j), per tile row or column as its channel's
    params are loaded (_reduce_partial).

    That holds where the inputs are finite; where they are not (or a sum overflows), some
    sum or combined gradient is +-inf or NaN (a term that is an input is, and where no term
    is, the input's x*0 is added to the first sum), and only then the program goes through
    its tiles again, with the per-element gradients, guards included (_not_finite: a branch
    taken once per program, never for finite data)."""
    s = d.spec
    block = d.kernel_backward
    for j in range(len(lin.bases)):
        w(f"_sum_b{j} = _partial_zeros(BLOCK_M, BLOCK_N, ACC)")
    _program_params(w, d)
    input_names = [f"d_{n}" for n in s.inputs]
    outputs = tuple((n, e) for n, e in block.outputs if n in input_names)
    fast = Block(_needed(block, [e for _, e in outputs] + list(lin.bases)).assignments, outputs)
    with w.indent("for _it in range(_iters if STEP else 1):"):
        _backward_loads(w, d, NTH_TILE_INDEX)
        printer = TritonPrinter(_tensor_names(d), _shared_params(d))
        _block(w, fast, printer, "_")
        _input_stores(w, d)
        with w.indent("if PARAM_GRAD:"):
            zero = {u: sympy.S.Zero for u in d.inputs}
            for j, b in enumerate(lin.bases):
                value = "_g" if b == 1 else f"_g * {printer.paren(b, ATOM)}"
                finite_at_zero = _expanded(block, b).xreplace(zero).is_finite     # masked elements: inputs 0, grad 0
                w(f"_sum_b{j} += {value if finite_at_zero else f'_in_tile({value}, _mask)'}")
            for u in d.inputs:
                if u not in lin.bases:
                    w(f"_sum_b0 = tl.fma({u.name}, 0.0, _sum_b0)")
    with w.indent("if PARAM_GRAD:"):
        sums = [sympy.Symbol(f"_red_b{j}", real=True) for j in range(len(lin.bases))]     # (_r<k> are draws)
        coefficients = [c for row in lin.coefficients for _, c in row]
        uniform = _needed(block, coefficients)
        renamed = {t: sympy.Symbol(f"_c{t.name}", real=True) for t, _ in uniform.assignments}
        printer = TritonPrinter([*_tensor_names(d), *(r.name for r in sums)], _shared_params(d))
        for t, e in uniform.assignments:
            e = e.xreplace(renamed)
            w(f"{renamed[t].name} = {printer.doprint(e)}")
            printer.add_temporary(renamed[t], e)
        for j in range(len(lin.bases)):
            w(f"_red_b{j} = _reduce_partial(_sum_b{j}, CH_AXIS)")
        names = []
        for p, row in zip(s.params, lin.coefficients):
            combined = sympy.Add(*(c.xreplace(renamed) * sums[j] for j, c in row))
            w(f"_p_{p.name} = {printer.doprint(combined) if row else 'tl.zeros_like(_red_b0)'}")
            names.append(f"_p_{p.name}")
        check = " + ".join(names + [f"_red_b{j}" for j in range(len(lin.bases))])
        with w.indent(f"if _not_finite({check}):"):
            _param_sums(w, d, "= _partial_zeros(BLOCK_M, BLOCK_N, ACC)")
            params = [f"d_{p.name}" for p in s.params]
            grads = tuple((n, e) for n, e in block.outputs if n in params)
            with w.indent("for _it in range(_iters if STEP else 1):"):
                _backward_loads(w, d, NTH_TILE_INDEX)
                _block(w, Block(_needed(block, [e for _, e in grads]).assignments, grads),
                       TritonPrinter(_tensor_names(d), _shared_params(d)), "_")
                _param_sums(w, d, "+= _in_tile(_g * _d_{}, _mask)")
            for p in s.params:
                w(f"_p_{p.name} = _reduce_partial(_sum_{p.name}, CH_AXIS)")
        for k, p in enumerate(s.params):
            w(f"_store_reduced({_partials_at(k)}, _p_{p.name}, BLOCK_M, BLOCK_N, CH_AXIS)")


def _partials_at(k: int) -> str:
    """Where param k's partial sums go: the k-th run of _n_partials in the partials buffer."""
    return "_partials_ptr" if k == 0 else f"_partials_ptr + {k} * _n_partials"


def _backward_tile(w: Writer, d: Derivation, tile_index: str):
    """Load one tile, store grad * df/dinput for every input; leaves _g and _d_<param> (the
    params are loaded before, once per program)."""
    _backward_loads(w, d, tile_index)
    _block(w, d.kernel_backward, TritonPrinter(_tensor_names(d), _shared_params(d)), "_")
    _input_stores(w, d)


def _backward_loads(w: Writer, d: Derivation, tile_index: str):
    """A backward's tile: its index, grad, the inputs and the draws at its elements."""
    w(tile_index)
    w("_g = tl.load(_grad_ptr + _offs, mask=_mask, other=0.0).to(ACC)")
    _input_loads(w, d)
    _kernel_draws(w, d.kernel_backward, d)


def _input_stores(w: Writer, d: Derivation):
    """Store grad * df/dinput for every input."""
    offs = "_offs"
    if d.spec.gated:
        w("_ing = _row_offsets(_offs, _rows, _cols, _M, _SG)")
        offs = "_ing"
    for n in d.spec.inputs:
        w(f"tl.store(_d_{n}_ptr + {offs}, {_stored(f'_g * _d_{n}', f'_d_{n}_ptr', d.wide_backward)}, mask=_mask)")


def _stored(value: str, ptr: str, wide: bool) -> str:
    """The expression value in ptr's element type; where the op computes this direction in
    float64 for narrower data too (wide), through _narrow."""
    if wide:
        return f"_narrow({value}, {ptr})"
    return f"{value if value.isidentifier() else f'({value})'}.to({ptr}.dtype.element_ty)"


def _modes_doc(s) -> str:
    """What a spec's modes keyword does, in a docstring."""
    kw, pairs = s.modes
    others = ", ".join(f"{v!r} ({t})" for v, t in pairs[1:])
    return f"{kw} picks the formula: {pairs[0][0]!r} (this one, the default) or {others}."


def _functional(w: Writer, d: Derivation):
    s = d.spec
    # torch's order: inputs, params, constants, training (F.leaky_relu(x, 0.2),
    # F.rrelu(x, lower, upper, training), F.prelu(x, weight)); the rest are keywords
    inputs = [s.inputs[0], f"{s.inputs[1]}=None"] if s.gated else list(s.inputs)
    args = inputs + [f"{p.name}={p.init!r}" for p in s.params] + [f"{c.name}={c.default!r}" for c in s.constants]
    args += ["training=False"] if d.draws else []
    kw = (["dim=-1"] if s.gated else []) + (["channel_dim=1"] if s.per_channel else [])
    kw += [f"{s.modes[0]}={s.modes[1][0][0]!r}"] if s.modes else []
    sig = ", ".join(args + (["*"] + kw if kw else []))
    if s.modes:
        others = ", ".join(f"{v!r}: _mode_{t}" for v, t in s.modes[1][1:])
        w(f"_MODES = {{{others}}}     # {s.modes[0]}: the activations its other values pick")
        w()
        w()
    with w.indent(f"def {s.name}({sig}):"):
        doc = [s.doc.strip() or f"The {s.name} activation.", "", f"f = {' '.join(s.formula.split())}"]
        if s.params:
            doc.append("Params are tensors of shape (1,)" + (" or, if per-channel, (C,)" if s.per_channel else "")
                       + " - or Python floats.")
        if s.gated:
            doc.append(f"Called with one tensor ({s.inputs[1]} None), it is split in two halves along `dim` "
                       f"({', '.join(s.inputs)}), as torch's F.glu; an int in {s.inputs[1]}'s place is that dim "
                       f"({s.name}(x, 1), as F.glu(x, 1)).")
        if d.draws:
            doc.append("training=True draws every uniform(lo, hi) afresh per element (one seed per call from "
                       "torch's default generator); training=False uses its mean (lo + hi)/2.")
        if s.modes:
            doc.append(_modes_doc(s))
        w('"""' + escape_docstring("\n".join(doc)) + '"""')
        if s.gated:
            with w.indent(f"if {s.inputs[1]} is None or type({s.inputs[1]}) is int:"):
                w(f"{', '.join(s.inputs)} = _rt.split_halves({s.inputs[0]}, _rt.halves_dim({s.inputs[1]}, dim, {s.name!r}), {s.name!r})")
        _checks(w, s, s.name)
        if s.modes:
            kw_name, default = s.modes[0], s.modes[1][0][0]
            with w.indent(f"if {kw_name} != {default!r}:"):
                w(f"return _rt.mode_function({s.name!r}, {kw_name!r}, {kw_name}, _MODES, {default!r})({s.inputs[0]})")
        cd = "channel_dim" if s.per_channel else "1"
        training = ", training" if d.draws else ""
        w(f"return _OP.call({_tuple(s.inputs)}, {_tuple(p.name for p in s.params)}, {_tuple(c.name for c in s.constants)}, {cd}{training})")
    w()
    w()
    w(f"torch.fx.wrap({s.name!r})      # (one node of a torch.fx.symbolic_trace, as torch's own functions)")
    w()
    w()


def _checks(w: Writer, s, owner: str):
    """The spec's checks on its constants: a ValueError with its message where one fails."""
    for cond, message in s.checks:
        printed = TorchPrinter((), s.inputs[0]).doprint(cond)
        with w.indent(f"if not ({printed}):"):
            w(f"raise ValueError({f'{owner}: {message}'!r})")


def _tuple(names) -> str:
    names = list(names)
    return "(" + ", ".join(names) + ("," if len(names) == 1 else "") + ")"


def _functions(w: Writer, d: Derivation):
    s = d.spec
    cls = s.class_name
    args = [*s.inputs, *(p.name for p in s.params), *(c.name for c in s.constants), "channel_dim", *_seed_args(d)]
    vmap = "_OP.vmap" if d.draws else "_rt.vmap_by_loop"
    with w.indent(f"class {cls}Core(torch.autograd.Function):"):
        w(f'"""{s.name} as an autograd Function without jvp (what torch.compile traces)."""')
        w()
        _staticmethod(w, f"forward({', '.join(args)})", f"return _OP.forward({', '.join(args)})")
        w()
        _staticmethod(w, "setup_context(ctx, inputs, output)", "_OP.setup_context(ctx, inputs)")
        w()
        _staticmethod(w, "backward(ctx, grad_output)", "return _OP.backward(ctx, grad_output)")
        w()
        _staticmethod(w, "vmap(info, in_dims, *args)", f"return {vmap}({cls}Core, info, in_dims, *args)")
    w()
    w()
    with w.indent(f"class {cls}Function({cls}Core):"):
        w(f'"""{s.name} as an autograd Function: apply({", ".join(args)}).')
        w()
        if d.draws:
            w("_seed: an int for training mode (the draws of every uniform(...)), None for evaluation mode.")
        w("Backward recomputes from the saved inputs and params and is itself differentiable;")
        w('jvp gives forward-mode AD."""')
        w()
        _staticmethod(w, "setup_context(ctx, inputs, output)", "_OP.setup_context(ctx, inputs, jvp=True)")
        w()
        _staticmethod(w, "jvp(ctx, *tangents)", "return _OP.jvp(ctx, *tangents)")
        w()
        _staticmethod(w, "vmap(info, in_dims, *args)", f"return {vmap}({cls}Function, info, in_dims, *args)")
    w()
    w()
    w(f"_OP.bind({cls}Core, {cls}Function)")
    w()
    w()


def _staticmethod(w: Writer, signature: str, body: str) -> None:
    """A one-line static method of a generated class."""
    w("@staticmethod")
    with w.indent(f"def {signature}:"):
        w(body)


def _module_class(w: Writer, d: Derivation):
    s = d.spec
    cls = s.class_name
    if s.gated:
        head = ["dim=-1"] + (["num_channels=1", "channel_dim=1"] if s.per_channel else [])
    elif s.per_channel:
        head = ["num_channels=1", "channel_dim=1"]
    else:
        head = []
    constants = [f"{c.name}={c.default!r}" for c in s.constants]
    modes = [f"{s.modes[0]}={s.modes[1][0][0]!r}"] if s.modes else []
    inplace = not s.params and not s.gated
    if not head:
        # torch's order: LeakyReLU(negative_slope=0.01, inplace=False), Threshold(threshold, value),
        # GELU(approximate='none')
        head = modes + constants + (["inplace=False"] if inplace else [])
        keywords = []
    else:
        keywords = list(constants)
    if s.per_channel and not s.gated:
        keywords.append("num_parameters=None")          # torch.nn.PReLU's spelling
    single = s.params[0] if len(s.params) == 1 else None
    if single is not None:
        keywords.append("init=None")                    # torch.nn.PReLU's spelling
    if s.params:
        keywords += ["device=None", "dtype=None"]       # torch's factory keywords
    sig = ", ".join(["self", *head] + (["*", *keywords] if keywords else []))
    with w.indent(f"class {cls}(torch.nn.Module):"):
        doc = [s.doc.strip() or f"The {s.name} activation.", "", f"f = {' '.join(s.formula.split())}"]
        if s.gated:
            doc.append(f"The input is split in two halves along `dim` ({', '.join(s.inputs)}), as torch.nn.GLU.")
        if s.per_channel and not s.gated:
            doc.append("num_parameters is accepted for num_channels, as torch.nn.PReLU spells it.")
        if single is not None:
            doc.append(f"init overrides the initial value of {single.name} ({single.init!r}).")
        if d.draws:
            doc.append("In train() mode every uniform(lo, hi) is drawn afresh per element; in eval() mode it is its mean.")
        if s.modes:
            doc.append(_modes_doc(s))
        if inplace:
            doc.append("inplace is accepted as torch's modules take it, and has no effect: the result is a "
                       "new tensor (backward recomputes from the unmodified input).")
        w('"""' + escape_docstring("\n".join(doc)) + '"""')
        w()
        with w.indent(f"def __init__({sig}):"):
            w("super().__init__()")
            if s.per_channel and not s.gated:
                with w.indent("if num_parameters is not None:"):
                    with w.indent("if num_channels not in (1, num_parameters):"):
                        w(f"raise TypeError(f\"{cls}: num_channels={{num_channels!r}} and num_parameters="
                          f"{{num_parameters!r}} disagree (num_parameters is torch.nn.PReLU's name for it); give one\")")
                    w("num_channels = num_parameters")
            if s.per_channel:
                w(f"channel_dim = _rt.dim_index(channel_dim, {cls!r}, 'channel_dim')")
            if s.gated:
                w(f"dim = _rt.dim_index(dim, {cls!r}, 'dim')")
            if s.modes:
                kw_name = s.modes[0]
                w(f"_rt.mode_function({cls!r}, {kw_name!r}, {kw_name}, _MODES, {s.modes[1][0][0]!r})")
            if inplace:
                with w.indent("if not isinstance(inplace, (bool, int)):"):
                    w(f"raise TypeError(f\"{cls}: inplace must be True or False, got {{inplace!r}}\")")
            _checks(w, s, cls)
            for n in dict.fromkeys([h.split("=")[0] for h in head] + [c.name for c in s.constants]):
                w(f"self.{n} = {n}")
            if s.per_channel and not s.gated:
                w("self.num_parameters = num_channels      # (torch.nn.PReLU's name for it)")
            if single is not None:
                w(f"self.init = {single.init!r} if init is None else float(init)")
            for p in s.params:
                size = "num_channels" if p.per_channel else "1"
                w(f"self.{p.name} = torch.nn.Parameter(torch.empty({size}, device=device, dtype=dtype))")
            if s.params:
                w("self.reset_parameters()")
        w()
        if s.params:
            with w.indent("def reset_parameters(self):"):
                with w.indent("with torch.no_grad():"):
                    for p in s.params:
                        value = "self.init" if single is not None else repr(p.init)
                        w(f"self.{p.name}.fill_({value})")
            w()
        call_params = [f"self.{p.name}" for p in s.params]
        kw = (["channel_dim=self.channel_dim"] if s.per_channel else []) + [f"{c.name}=self.{c.name}" for c in s.constants]
        kw += ["training=self.training"] if d.draws else []
        kw += [f"{s.modes[0]}=self.{s.modes[0]}"] if s.modes else []
        if s.gated:
            with w.indent("def forward(self, input):"):      # (the function splits it: one call, one fx node)
                w(f"return {s.name}({', '.join(['input', 'None', *call_params, 'dim=self.dim', *kw])})")
        else:
            with w.indent(f"def forward(self, {s.inputs[0]}):"):
                w(f"return {s.name}({', '.join([s.inputs[0], *call_params, *kw])})")
        fields = [n for n in dict.fromkeys([h.split("=")[0] for h in head] + [c.name for c in s.constants])
                  if n != "inplace"]
        if single is not None:
            fields.append("init")
        if fields:      # (else nn.Module's own: nothing to show)
            w()
            with w.indent("def extra_repr(self):"):
                w('return f"' + ", ".join(f"{f}={{self.{f}!r}}" for f in fields) + '"')


def _native_functions(w: Writer, d: Derivation, native: NativeMatch):
    """torch's own kernels for the formula (actgen.native): the CPU fallback's f and
    grad * df/d(input) on the inputs they are trusted with."""
    args = ", ".join([*d.spec.inputs, *(c.name for c in d.spec.constants)])
    x = d.spec.inputs[0]
    what = f"torch's {native.kernel.name}" + (f" of {x}, times {native.gate}" if native.gate else "")
    w(f"# ---- torch's own kernels: the formula is {what} (the CPU fallback; actgen.native) ----")
    w()
    w()
    with w.indent(f"def _forward_native({args}, _out):"):
        w('"""f, into _out."""')
        for line in native.forward:
            w(line)
    w()
    w()
    if native.backward is not None:
        grads = " and ".join(f"grad * df/d{n} into _out[{i}]" for i, n in enumerate(d.spec.inputs))
        with w.indent(f"def _backward_native(_g, {args}, _out):"):
            w(f'"""{grads}' + (" (where not None)." if native.gate else ".") + '"""')
            for line in native.backward:
                w(line)
        w()
        w()


def _trusted_lines(trusted) -> list[str]:
    """A NativeKernel's windows as the runtime takes them, one dtype a line: {dtype name:
    (forward window, backward window)}, infinities as math.inf; a dtype with none left out."""
    def bound(v: float) -> str:
        return repr(v) if math.isfinite(v) else ("math.inf" if v > 0 else "-math.inf")

    def window(win) -> str:
        return "None" if win is None else f"({bound(win[0])}, {bound(win[1])})"
    return [f"{d!r}: ({window(f)}, {window(b)})," for d, f, b in trusted if (f, b) != (None, None)]


def render_module(d: Derivation) -> str:
    s = d.spec
    w = Writer()
    _header(d, w)
    w("import math")
    w()
    w("import torch")
    w()
    w("from actgen import runtime as _rt")
    if s.modes:     # the activations the modes keyword picks: this package's modules
        for _, target in s.modes[1][1:]:
            w(f"from .{target} import {target} as _mode_{target}")
    w()
    w(f"FORMULA = {s.formula!r}")
    w(f"SPEC_SHA256 = {s.sha256!r}")
    w()
    w()
    w("# ---- eager torch fallback (CPU, or when triton is missing) ----")
    w()
    w()
    forward_doc = "f, elementwise" + ("; params broadcast against the input" if s.params else "")
    if d.draws:
        forward_doc += f"; {', '.join(r.name for r in d.draws)}: the draws (U[0, 1) tensors, or 1/2)"
    _torch_function(w, d, "_forward_torch", forward_doc + ".", d.forward, False)
    names = ", ".join(f"df/d{n}" for n, _ in d.first)
    _torch_function(w, d, "_derivatives_torch", f"{names}.", d.backward, True)
    fast = (_fast_function(w, d, "_forward_torch_fast", "f", d.forward, d.forward_fast, False),
            _fast_function(w, d, "_derivatives_torch_fast", names, d.backward, d.backward_fast, True))
    _torch_function(w, d, "_second_derivatives_torch", "Second derivatives d2f/da db, upper triangle in (inputs, params) order.", d.double_backward, True)
    native = native_match(s)
    if native is not None:
        _native_functions(w, d, native)
    w("# ---- Triton kernels: one forward, one backward (param gradients included) ----")
    w()
    with w.indent("if _rt.HAS_TRITON:"):
        kernels = Writer()
        _forward_kernel(kernels, d)
        _backward_kernel(kernels, d)
        source = "\n".join(kernels.lines)
        w("from actgen.runtime.triton_lang import libdevice, tl, triton")
        helpers = [h for h in KERNEL_HELPERS if re.search(rf"(?<!\w)_{h}\(", source)]
        w(f"from actgen.runtime.triton_lang import {', '.join(f'{h} as _{h}' for h in helpers)}")
        w()
        for line in kernels.lines:
            w(line)
    w()
    params = ", ".join(f"({p.name!r}, {p.per_channel})" for p in s.params)
    w("_OP = _rt.Activation(")
    with w.indent():
        w(f"name={s.name!r},")
        w(f"key={op_key(d)!r},")
        w(f"inputs={tuple(s.inputs)!r},")
        w(f"params=({params}{',' if len(s.params) == 1 else ''}),")
        w(f"constants={tuple(c.name for c in s.constants)!r},")
        w("forward_torch=_forward_torch,")
        w("derivatives_torch=_derivatives_torch,")
        w("second_derivatives_torch=_second_derivatives_torch,")
        if native is not None:
            w("forward_native=_forward_native,")
            if native.backward is not None:
                w("backward_native=_backward_native,")
            w("native_trusted={")
            with w.indent():
                for line in _trusted_lines(native.trusted):
                    w(line)
            w("},")
            if any(native.any_input):
                w(f"native_any_input={native.any_input!r},")
        w(f"forward_torch_fast={'_forward_torch_fast' if fast[0] else None},")
        w(f"derivatives_torch_fast={'_derivatives_torch_fast' if fast[1] else None},")
        if any(fast):
            w(f"fast_buffers=({', '.join(str(f[0] if f else 0) for f in fast)}),")
            if any(f and f[1] for f in fast):
                w(f"fast_any_input=({', '.join(str(bool(f and f[1])) for f in fast)}),")
        w("forward_kernel=_forward_kernel if _rt.HAS_TRITON else None,")
        w("backward_kernel=_backward_kernel if _rt.HAS_TRITON else None,")
        if d.draws:
            w(f"draws={len(d.draws)},")
        if d.wide_forward:
            w("float64_forward=True,")
        if d.wide_backward:
            w("float64_backward=True,")
        if float64_16bit(d):
            w("float64_16bit=True,")
    w(")")
    w()
    w()
    _functional(w, d)
    _functions(w, d)
    _module_class(w, d)
    return _unused_imports_dropped(w.text())


def _unused_imports_dropped(text: str) -> str:
    """The module without `import math` or triton_lang's libdevice where nothing uses them (the
    header's docstring, the spec's text, left alone)."""
    head, sep, body = text.partition('\n"""\n')
    if not sep:
        return text
    uses = lambda name: re.search(rf"(?<![\w.]){name}\.\w", body) is not None       # noqa: E731
    if not uses("math") and body.startswith("import math\n\n"):
        body = body[len("import math\n\n"):]
    if not uses("libdevice"):
        body = body.replace("from actgen.runtime.triton_lang import libdevice, tl, triton",
                            "from actgen.runtime.triton_lang import tl, triton", 1)
    return head + sep + body


def render_package_init(package: str, specs) -> str:
    """The package's __init__: its activations (specs) by module, each imported on first use
    (actgen.runtime.package)."""
    w = Writer()
    w(f'"""Activations generated by actgen ({package}). {GENERATED_MARK}')
    w()
    first = specs[0] if specs else None
    example = f" (`{package}.{first.name}`, `from {package} import {first.class_name}`)" if first is not None else ""
    w(f"Each activation's module is imported when one of its names is first used{example}:")
    w('importing one compiles its kernels\' sources and registers its ops."""')
    # (the helper under a name no activation can take: an activation `lazy_package` is
    # the package's own attribute then, not the helper)
    w("from actgen.runtime.package import lazy_package as _lazy_package")
    w()
    exported = []
    with w.indent("_lazy_package(__name__, {"):
        for spec in specs:
            w(f"{spec.name!r}: ({', '.join(repr(n) for n in spec.exports)}),")
            exported += spec.exports
    w("})")
    w()
    w("__all__ = [")
    with w.indent():
        for n in sorted(exported):
            w(f"{n!r},")
    w("]")
    return w.text()
