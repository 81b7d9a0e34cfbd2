"""YAML spec text -> validated, frozen `Spec`.

Specs are untrusted: they are read with PyYAML's safe loader, every field is checked, and
every problem is reported as `path:line: field: what is wrong` (all of them, not just the
first).  Nothing here evaluates anything.
"""
from __future__ import annotations

import builtins
import functools
import hashlib
import keyword
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import sympy
import yaml

from .formula import FLOAT32_MAX, RESERVED_NAMES, FormulaError, make_symbol, UnknownName, parse_condition, parse_formula
from .timelimit import TooSlow, time_limit

SPEC_FIELDS = ("name", "formula", "doc", "inputs", "params", "constants", "class_name", "reference", "precision", "modes",
               "checks")
#: `precision`: auto (the compiler's precision check decides, see actgen.precision), float32
#: (never float64 for narrower inputs) or float64 (forward and backward always in float64).
PRECISIONS = ("auto", "float32", "float64")
PARAM_FIELDS = ("init", "per_channel")
#: `modes`: one keyword whose string values pick an activation, as torch.nn.GELU's
#: approximate picks the tanh form: {keyword: {value: activation name, ...}}, the first value
#: this activation itself (the default), the others activations of the same build.
MAX_MODES = 8
_MODE_RE = re.compile(r"[A-Za-z0-9_]{1,32}\Z")
#: `checks`: conditions on the constants that a call (and a Module's construction) must
#: meet, each with the message of the ValueError it raises where it does not:
#: {"min_val <= max_val": "max_val must be at least min_val"}, as torch's hardtanh refuses.
MAX_CHECKS = 8
MAX_CHECK_MESSAGE = 200
MAX_SPEC_BYTES = 64 * 1024
#: Lists and mappings nested deeper than this are refused (a spec needs 3).
MAX_YAML_DEPTH = 16

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_VAR_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_CLASS_RE = re.compile(r"[A-Z][A-Za-z0-9_]*\Z")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\Z")
_REFERENCE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
# Names generated code uses next to the user's: modules, the functional's keywords,
# Module methods' arguments, Python builtins.
_GENERATED_NAMES = frozenset(
    {"torch", "triton", "tl", "libdevice", "math", "F", "nn", "channel_dim", "dim",
     "num_channels", "num_parameters", "init", "device", "dtype", "inplace", "self", "ctx", "cls", "grad_output", "input",
     "info", "in_dims", "args", "tangents", "training", "reset_parameters",
     # the kernels' compile-time arguments (actgen.codegen.module), next to the variables
     "BLOCK_M", "BLOCK_N", "CH_AXIS", "ACC", "FAST", "PARAM_GRAD", "STEP", "TRAINING",
     # a generated module's own names (a class of one of them took its place)
     "FORMULA", "SPEC_SHA256"}
) | frozenset(
    # Triton's launch keywords and compile options (3.6-3.9, CUDA and HIP): a kernel argument
    # of one of these names is given twice at launch (`num_warps` made the kernels unusable)
    {"grid", "warmup", "allow_flush_denorm", "allowed_dot_input_precisions", "arch", "backend_name", "clc",
     "debug", "default_dot_input_precision", "deprecated_fp8_dot_operand_dtypes", "enable_fp_fusion",
     "enable_reflect_ftz", "extern_libs", "fpsan_homomorphic_casts", "instrumentation_mode", "ir_override",
     "kpack", "launch_cooperative_grid", "launch_pdl", "llvm_fn_attrs", "matrix_instr_nonkdim",
     "max_num_imprecise_acc_default", "maxnreg", "min_shared_mem", "num_ctas", "num_stages", "num_warps",
     "ptx_options", "ptx_version", "sanitize_overflow", "sched4reg", "schedule_hint", "supported_fp8_dtypes",
     "warp_size", "waves_per_eu", "wgp_cu_mode"}
)
#: The longest name, variable or class name (a module's file name is the activation's).
MAX_NAME_LENGTH = 64
#: The most params and constants one spec declares.
MAX_VARIABLES = 64
#: Seconds one formula may take to parse (sympy's Max and Min of Max and Min grow with the
#: product of their arguments' branches; a formula of the catalogue parses in milliseconds).
MAX_PARSE_SECONDS = 20
_RESERVED = RESERVED_NAMES | _GENERATED_NAMES | frozenset(dir(builtins))
# an activation's name becomes a module and a function next to the generated code
_RESERVED_MODULE_NAMES = _GENERATED_NAMES | frozenset(dir(builtins))


class SpecError(ValueError):
    """One or more problems in spec files; `problems` are `path:line: field: message` lines.
    A ValueError: actgen.compile's caller catches a bad formula as any bad argument."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Param:
    name: str
    init: float
    per_channel: bool = False


@dataclass(frozen=True)
class Constant:
    name: str
    default: float


@dataclass(frozen=True)
class Spec:
    name: str
    formula: str
    expr: sympy.Expr = field(compare=False, repr=False)
    doc: str = ""
    inputs: tuple[str, ...] = ("x",)
    params: tuple[Param, ...] = ()
    constants: tuple[Constant, ...] = ()
    class_name: str = ""
    reference: str | None = None
    precision: str = "auto"
    # (keyword, ((value, activation name), ...)): see SPEC_FIELDS' modes; the first is this one
    modes: tuple | None = None
    # ((condition on the constants, message), ...): see SPEC_FIELDS' checks
    checks: tuple = ()
    source: str = "<string>"
    sha256: str = ""
    formula_line: int = field(default=1, compare=False)     # where the formula is in source
    name_line: int = field(default=1, compare=False)        # where the name is
    modes_line: int = field(default=1, compare=False)       # where the modes are

    @property
    def gated(self) -> bool:
        return len(self.inputs) == 2

    @property
    def per_channel(self) -> bool:
        return any(p.per_channel for p in self.params)

    @property
    def exports(self) -> tuple[str, str, str]:
        """The names a generated package exports for it: function, Module, autograd Function."""
        return self.name, self.class_name, f"{self.class_name}Function"

    @property
    def symbols(self) -> dict[str, sympy.Symbol]:
        return {n: make_symbol(n) for n in (*self.inputs, *(p.name for p in self.params), *(c.name for c in self.constants))}


def camel_case(name: str) -> str:
    """leaky_relu -> LeakyRelu"""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


class _Problems:
    def __init__(self, path: str):
        self.path = path
        self._found: list[tuple[int, str]] = []
        self.refused_names: set[str] = set()      # (declared, but not valid: the formula may still use them)

    def add(self, node_or_line, fieldname: str, message: str):
        line = node_or_line if isinstance(node_or_line, int) else node_or_line.start_mark.line + 1
        self._found.append((line, f"{self.path}:{line}: {fieldname}: {message}"))

    @property
    def items(self) -> list[str]:
        """The problems in the order of their lines in the file."""
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]


_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null"))


_KIND_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}
#: what PyYAML reads a plain scalar as that a spec has no use for: taken as the text written
#: (doc: 2001-12-14, doc: =) where no tag is written
_IMPLICIT_AS_TEXT = frozenset({"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"})


def _tag_taken(node: yaml.Node, source: str) -> bool:
    """Whether a node's tag is one a spec takes - a plain scalar read as a date or a merge
    value becomes a string - and fits its kind (`!!str {a: 1}` does not)."""
    if isinstance(node, yaml.ScalarNode) and node.tag in _IMPLICIT_AS_TEXT and source[node.start_mark.index] != "!":
        node.tag = "tag:yaml.org,2002:str"
    kind = _KIND_TAGS.get(type(node))
    return node.tag == kind if kind else node.tag in _SCALAR_TAGS


def _walk(root: yaml.Node):
    """Every node under root (a tree: aliases are refused before it is composed)."""
    todo = [root]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, yaml.MappingNode):
            todo.extend(n for kv in reversed(node.value) for n in reversed(kv))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(reversed(node.value))


def _scalar(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return loader.construct_object(node, deep=True)


def _mapping(node: yaml.MappingNode, problems: _Problems, where: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            problems.add(key_node, where or "spec", "keys must be plain names")
            continue
        key = key_node.value
        if key in out:
            problems.add(key_node, f"{where}.{key}" if where else key, "is given twice")
            continue
        out[key] = (key_node, value_node)
    return out


def _number(loader, node, problems, fieldname):
    if not isinstance(node, yaml.ScalarNode):
        problems.add(node, fieldname, "must be a number")
        return None
    value = _scalar(loader, node)
    if isinstance(value, str) and node.style is None and _FLOAT_RE.match(value):
        value = float(value)        # 1e-5: a number, though YAML 1.1 (PyYAML) wants 1.0e-5
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.add(node, fieldname, f"must be a number, got {node.value!r}")
        return None
    try:
        value = float(value)
    except OverflowError:       # an integer beyond float64's range
        value = math.inf
    if not math.isfinite(value):
        problems.add(node, fieldname, "must be a finite number")
        return None
    if abs(value) > FLOAT32_MAX:
        problems.add(node, fieldname, f"{value:g} is beyond float32's range (+-3.4e38)")
        return None
    return value


def _string(loader, node, problems, fieldname):
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        problems.add(node, fieldname, "must be a string")
        return None
    value = _scalar(loader, node)
    try:                # ("\ud800" is a YAML escape for a lone surrogate: no UTF-8 file can hold it)
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        problems.add(node, fieldname, f"is not valid Unicode text (a lone surrogate at character {exc.start + 1})")
        return None
    return value


def _too_long(name: str) -> str:
    return f"'{name[:16]}...' is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"


@functools.cache
def _module_attributes() -> frozenset[str]:
    """What torch.nn.Module has: a param or constant becomes an attribute of the generated
    module, and must not take the place of one (forward, to, train, state_dict, ...)."""
    import torch.nn

    return frozenset(dir(torch.nn.Module))


def _check_var(name, node, problems, fieldname, seen):
    ok = _valid_var(name, node, problems, fieldname, seen)
    if not ok and isinstance(name, str):
        problems.refused_names.add(name)
    return ok


def _valid_var(name, node, problems, fieldname, seen):
    if isinstance(name, str) and keyword.iskeyword(name):
        problems.add(node, fieldname, f"{name!r} is a Python keyword, which a name cannot be")
        return False
    if not isinstance(name, str) or not _VAR_RE.match(name):
        problems.add(node, fieldname, f"{name!r} is not a valid name (ASCII letters, digits and _, starting with a letter)")
        return False
    if len(name) > MAX_NAME_LENGTH:
        problems.add(node, fieldname, _too_long(name))
        return False
    if fieldname in ("params", "constants") and name in _module_attributes():
        problems.add(node, fieldname, f"'{name}' is an attribute of torch.nn.Module, which the generated module is")
        return False
    if name.endswith(("_ptr", "_stride")):
        problems.add(node, fieldname, f"'{name}' must not end in _ptr or _stride (generated kernels use those names)")
        return False
    if name in _RESERVED:
        problems.add(node, fieldname, f"'{name}' collides with a reserved name (a function, constant or generated-code name)")
        return False
    if name in seen:
        problems.add(node, fieldname, f"'{name}' is already declared as {seen[name]}")
        return False
    return True


def load_spec(text: str | bytes, path: str = "<string>") -> Spec:
    """Validate one spec's YAML text.  Raises SpecError listing every problem."""
    problems = _Problems(path)
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError([f"{path}:1: spec: file is larger than {MAX_SPEC_BYTES} bytes"])
    try:
        # a spec has no use for YAML aliases (*name), which can nest into a cycle or an
        # exponential expansion: refused from the parser's events, before anything is built
        depth = 0
        for event in yaml.parse(raw.decode("utf-8"), Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise SpecError([f"{path}:{event.start_mark.line + 1}: spec: YAML aliases (*name) are not supported"])
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_YAML_DEPTH:
                raise SpecError([f"{path}:{event.start_mark.line + 1}: spec: nested deeper than {MAX_YAML_DEPTH} levels"])
        source = raw.decode("utf-8")
        loader = yaml.SafeLoader(source)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise SpecError([f"{path}:1: spec: not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError([f"{path}:{line}: spec: invalid YAML: {reason}"]) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        line = root.start_mark.line + 1 if root is not None else 1
        raise SpecError([f"{path}:{line}: spec: must be a mapping of fields ({', '.join(SPEC_FIELDS)})"])

    bad_tags = [n for n in _walk(root) if not _tag_taken(n, source)]
    if bad_tags:
        raise SpecError([f"{path}:{n.start_mark.line + 1}: spec: unsupported YAML tag {n.tag}" for n in bad_tags])

    fields = _mapping(root, problems, "")
    for key, (key_node, _) in fields.items():
        if key not in SPEC_FIELDS:
            problems.add(key_node, key, f"unknown field (known fields: {', '.join(SPEC_FIELDS)})")
    for required in ("name", "formula"):
        if required not in fields:
            problems.add(root, required, "is required")

    def get(key):
        return fields[key][1] if key in fields else None

    name = None
    if get("name") is not None:
        name = _string(loader, get("name"), problems, "name")
        if name is not None and (not _NAME_RE.match(name) or keyword.iskeyword(name) or name in _RESERVED_MODULE_NAMES):
            problems.add(get("name"), "name", f"{name!r} must match [a-z][a-z0-9_]* and not be a Python keyword or reserved name")
            name = None
        elif name is not None and len(name) > MAX_NAME_LENGTH:
            problems.add(get("name"), "name", _too_long(name))
            name = None

    seen: dict[str, str] = {}
    inputs: list[str] = ["x"]
    before_inputs = len(problems.items)
    if get("inputs") is not None:
        node = get("inputs")
        if not isinstance(node, yaml.SequenceNode) or len(node.value) not in (1, 2):
            problems.add(node, "inputs", "must be a list of one or two names (two make a gated activation)")
        else:
            inputs = []
            for item in node.value:
                value = _string(loader, item, problems, "inputs")
                if value is not None and _check_var(value, item, problems, "inputs", seen):
                    seen[value] = "an input"
                    inputs.append(value)
    else:
        seen["x"] = "an input"
    inputs_ok = len(problems.items) == before_inputs      # (else the formula's names cannot be told)

    params: list[Param] = []
    if get("params") is not None:
        node = get("params")
        if not isinstance(node, yaml.MappingNode):
            problems.add(node, "params", "must be a mapping name: {init: number, per_channel: bool} or name: number")
        else:
            for pname, (key_node, value_node) in _mapping(node, problems, "params").items():
                where = f"params.{pname}"
                if not _check_var(pname, key_node, problems, "params", seen):
                    continue
                seen[pname] = "a param"
                if isinstance(value_node, yaml.MappingNode):
                    sub = _mapping(value_node, problems, where)
                    for key, (k_node, _) in sub.items():
                        if key not in PARAM_FIELDS:
                            problems.add(k_node, f"{where}.{key}", f"unknown field (known fields: {', '.join(PARAM_FIELDS)})")
                    if "init" not in sub:
                        problems.add(value_node, f"{where}.init", "is required")
                        continue
                    init = _number(loader, sub["init"][1], problems, f"{where}.init")
                    per_channel = False
                    if "per_channel" in sub:
                        pc_node = sub["per_channel"][1]
                        per_channel = _scalar(loader, pc_node) if isinstance(pc_node, yaml.ScalarNode) else None
                        if not isinstance(per_channel, bool):
                            problems.add(pc_node, f"{where}.per_channel", "must be true or false")
                            continue
                    if init is not None:
                        params.append(Param(pname, init, per_channel))
                else:
                    init = _number(loader, value_node, problems, where)
                    if init is not None:
                        params.append(Param(pname, init, False))

    constants: list[Constant] = []
    if get("constants") is not None:
        node = get("constants")
        if not isinstance(node, yaml.MappingNode):
            problems.add(node, "constants", "must be a mapping name: number")
        else:
            for cname, (key_node, value_node) in _mapping(node, problems, "constants").items():
                if not _check_var(cname, key_node, problems, "constants", seen):
                    continue
                seen[cname] = "a constant"
                value = _number(loader, value_node, problems, f"constants.{cname}")
                if value is not None:
                    constants.append(Constant(cname, value))

    if len(params) + len(constants) > MAX_VARIABLES:
        where = "params" if get("params") is not None else "constants"
        problems.add(get(where), where, f"{len(params)} params and {len(constants)} "
                     f"constants; the limit is {MAX_VARIABLES} together")

    doc = ""
    if get("doc") is not None:
        doc = _string(loader, get("doc"), problems, "doc") or ""
        control = next((c for c in doc if unicodedata.category(c) == "Cc" and c not in "\n\r\t"), None)
        if control is not None:     # (it reaches terminals: `actgen show`, help(); an escape sequence would act there)
            problems.add(get("doc"), "doc", f"holds the control character U+{ord(control):04X} (text, line breaks and tabs only)")
            doc = ""

    class_name = camel_case(name) if name else ""
    if get("class_name") is not None:
        value = _string(loader, get("class_name"), problems, "class_name")
        if value is not None:
            if value in _RESERVED:
                problems.add(get("class_name"), "class_name", f"{value!r} collides with a reserved name (a builtin "
                             "or a name the generated module defines)")
            elif not _CLASS_RE.match(value) or keyword.iskeyword(value) or len(value) > MAX_NAME_LENGTH:
                problems.add(get("class_name"), "class_name", f"{value!r} must match [A-Z][A-Za-z0-9_]*, "
                             f"at most {MAX_NAME_LENGTH} characters long")
            else:
                class_name = value

    reference = None
    if get("reference") is not None:
        reference = _string(loader, get("reference"), problems, "reference")
        if reference is not None and not _REFERENCE_RE.match(reference):
            problems.add(get("reference"), "reference", f"{reference!r} must be a dotted name such as torch.nn.functional.silu")

    precision = "auto"
    if get("precision") is not None:
        value = _string(loader, get("precision"), problems, "precision")
        if value is not None and value not in PRECISIONS:
            problems.add(get("precision"), "precision", f"{value!r} must be one of {', '.join(PRECISIONS)}")
        elif value is not None:
            precision = value

    modes = _modes(loader, get("modes"), problems, name, inputs, params, constants, seen) if get("modes") is not None else None
    checks = _checks(loader, get("checks"), problems, constants) if get("checks") is not None else ()

    # A constant may share the activation's name (torch.nn.functional.threshold's keyword
    # `threshold`): constants are keyword-only and generated code never shadows the function.
    if name is not None and name in seen and seen[name] != "a constant":
        problems.add(get("name"), "name", f"'{name}' is also declared as {seen[name]}; an activation's name must differ from its variables")

    formula, expr = None, None
    if get("formula") is not None:
        node = get("formula")
        formula = _string(loader, node, problems, "formula")
        if formula is not None and inputs_ok:
            names = {n: make_symbol(n) for n in seen}
            expr = _parsed(lambda: _parse_known(formula, names, inputs, problems.refused_names), node, problems, "formula")
            if expr is not None:
                used = {s.name for s in expr.free_symbols}
                missing = [n for n in inputs if n not in used]
                if missing:
                    problems.add(node, "formula", f"does not use the input(s) {', '.join(missing)}")

    if problems.items:
        raise SpecError(problems.items)
    return Spec(
        name=name,
        formula=formula,
        expr=expr,
        doc=doc,
        inputs=tuple(inputs),
        params=tuple(params),
        constants=tuple(constants),
        class_name=class_name,
        reference=reference,
        precision=precision,
        modes=modes,
        checks=checks,
        source=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        formula_line=get("formula").start_mark.line + 1,
        name_line=get("name").start_mark.line + 1,
        modes_line=get("modes").start_mark.line + 1 if modes else 1,
    )


def _modes(loader, node, problems, name, inputs, params, constants, seen):
    """The `modes` field as (keyword, ((value, activation), ...)), or None with its problems."""
    shape = "must be a mapping of one keyword to a mapping of values to activations ({approximate: {none: gelu, tanh: gelu_tanh}})"
    if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
        problems.add(node, "modes", shape)
        return None
    (key_node, value_node), = node.value
    kw = _string(loader, key_node, problems, "modes")
    if kw is None or not _check_var(kw, key_node, problems, "modes", seen):
        return None
    if len(inputs) != 1 or params or constants:
        problems.add(node, "modes", "only an activation of one input without params or constants has modes")
        return None
    if not isinstance(value_node, yaml.MappingNode) or not 2 <= len(value_node.value) <= MAX_MODES:
        problems.add(value_node, f"modes.{kw}", f"must map 2 to {MAX_MODES} values to activations, this one first")
        return None
    pairs, before = [], len(problems.items)
    for k, v in value_node.value:
        value, target = _string(loader, k, problems, f"modes.{kw}"), _string(loader, v, problems, f"modes.{kw}")
        if value is None or target is None:
            continue
        if not _MODE_RE.match(value) or value in dict(pairs):
            problems.add(k, f"modes.{kw}", f"{value!r} must be a distinct word of letters, digits and _ (at most 32)")
        elif not _NAME_RE.match(target) or len(target) > MAX_NAME_LENGTH:
            problems.add(v, f"modes.{kw}.{value}", f"{target!r} must be an activation's name")
        elif (target == name) != (not pairs) or target in dict(pairs).values():
            problems.add(v, f"modes.{kw}.{value}", "the first value must name this activation (the default), "
                         "every other one another activation")
        else:
            pairs.append((value, target))
    return (kw, tuple(pairs)) if len(problems.items) == before else None


def _parse_known(formula, names, inputs, refused):
    """parse_formula's expression, or None where the formula uses a name refused as a
    variable (its problem is said there: one problem, not two)."""
    try:
        return parse_formula(formula, names, inputs)
    except UnknownName as exc:
        if exc.name in refused:
            return None
        raise


def _parsed(parse, node, problems, fieldname, prefix=""):
    """parse()'s expression, within MAX_PARSE_SECONDS; else None, with the problem (its
    FormulaError's message, or too complex) after prefix."""
    try:
        with time_limit(MAX_PARSE_SECONDS):
            return parse()
    except FormulaError as exc:
        problems.add(node, fieldname, f"{prefix}{exc}")
    except TooSlow:
        problems.add(node, fieldname, f"{prefix}too complex: parsing it took over {MAX_PARSE_SECONDS} s")
    return None


def _checks(loader, node, problems, constants):
    """The `checks` field as ((condition, message), ...), or () with its problems."""
    if not isinstance(node, yaml.MappingNode) or not 1 <= len(node.value) <= MAX_CHECKS:
        problems.add(node, "checks", f"must map 1 to {MAX_CHECKS} conditions on the constants to the message "
                     "where one does not hold ({'min_val <= max_val': 'max_val must be at least min_val'})")
        return ()
    if not constants:
        problems.add(node, "checks", "are conditions on the constants, and this activation has none")
        return ()
    names = {c.name: make_symbol(c.name) for c in constants}
    checks = []
    for k, v in node.value:
        text, message = _string(loader, k, problems, "checks"), _string(loader, v, problems, "checks")
        if text is None or message is None:
            continue
        cond = _parsed(lambda: parse_condition(text, names), k, problems, "checks", f"{text!r}: ")
        if cond is None:
            continue
        if not message.strip() or len(message) > MAX_CHECK_MESSAGE or "\n" in message:
            problems.add(v, "checks", f"the message of {text!r} must be one line of 1 to {MAX_CHECK_MESSAGE} characters")
            continue
        if cond.xreplace({names[c.name]: sympy.Float(c.default) for c in constants}) is sympy.false:
            defaults = ", ".join(f"{c.name} = {c.default!r}" for c in constants if names[c.name] in cond.free_symbols)
            problems.add(k, "checks", f"the constants' defaults ({defaults}) do not meet {text!r}: every call "
                         "with them would fail")
            continue
        checks.append((cond, message.strip()))
    return tuple(checks)


def _shown(path: str) -> str:
    """A path as an error line shows it: one line (control characters escaped)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return path.encode("unicode_escape").decode("ascii")
    return path


def load_spec_file(path: Path, display: str | None = None) -> Spec:
    path = Path(path)
    shown = _shown(display or str(path))
    try:
        if not path.is_file():          # (a directory, a FIFO, a device: nothing to read, or no end)
            what = ("is a symlink to nothing (or to itself)" if path.is_symlink() and not path.exists()
                    else "does not exist" if not path.exists() else "is not a regular file")
            raise SpecError([f"{shown}:1: spec: {what}"])
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)       # (load_spec refuses more)
    except OSError as exc:
        raise SpecError([f"{shown}:1: spec: cannot read file ({exc.strerror})"]) from None
    return load_spec(raw, shown)


def collect_spec_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to their *.yaml / *.yml entries, sorted by name: every one, so that
    one that is no regular file (a dangling symlink, a FIFO, a directory) is an error of its
    own, not a spec left out (whose module a build would then remove).  A path named *.yaml
    or *.yml is a spec file, whatever it is (load_spec_file says what is wrong with it)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir() and p.suffix not in (".yaml", ".yml"):
            files.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            files.append(p)
    seen, unique = set(), []
    for f in files:                 # (a directory or file given twice: its specs once)
        try:
            key = f.resolve()
        except (OSError, RuntimeError):     # (a symlink loop: load_spec_file says so)
            key = f.absolute()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def load_specs(paths: Iterable[Path]) -> list[Spec]:
    """Load every spec, collecting all problems (including duplicate names) into one SpecError."""
    specs: list[Spec] = []
    problems: list[str] = []
    files = collect_spec_files(paths)
    if not files:
        raise SpecError(["<args>:0: spec: no spec files found"])
    for f in files:
        try:
            specs.append(load_spec_file(f))
        except SpecError as exc:
            problems.extend(exc.problems)
    by_name: dict[str, Spec] = {}
    exported: dict[str, Spec] = {}      # the package's names: each spec's function, Module and Function
    for s in specs:
        if s.name in by_name:
            problems.append(f"{s.source}:{s.name_line}: name: '{s.name}' is already defined in {by_name[s.name].source}")
            continue
        by_name[s.name] = s
        taken = [n for n in s.exports if n in exported]
        if taken:
            problems.append(f"{s.source}:{s.name_line}: name: '{s.name}' exports '{taken[0]}', as {exported[taken[0]].name} "
                            f"in {exported[taken[0]].source} does (rename one, or give it a class_name)")
        else:
            exported.update(dict.fromkeys(s.exports, s))
    for s in by_name.values():
        for value, target in (s.modes[1][1:] if s.modes else ()):
            other = by_name.get(target)
            if other is None:
                problems.append(f"{s.source}:{s.modes_line}: modes: {value!r} names '{target}', which is not among "
                                "the specs built")
            elif other.modes:
                problems.append(f"{s.source}:{s.modes_line}: modes: {value!r} names '{target}', which has modes "
                                "itself (a mode picks an activation without modes)")
            elif other.inputs != s.inputs or other.params or other.constants:
                problems.append(f"{s.source}:{s.modes_line}: modes: {value!r} names '{target}', which does not take "
                                f"what '{s.name}' takes (the input {s.inputs[0]}, no params or constants)")
    if problems:
        raise SpecError(problems)
    return sorted(specs, key=lambda s: s.name)
