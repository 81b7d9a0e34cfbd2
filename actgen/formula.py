"""Formula text -> sympy expression, through a whitelist over Python's `ast` (never eval).

Formulas are untrusted text.  `sympify`/`parse_expr` would run Python's eval on them, so
this module parses with `ast.parse`, accepts only the node types and names of the formula
language, and builds the sympy expression from the tree itself.

`max`/`Max`, `min`/`Min`, `where`, `sign` and `Heaviside` become `Piecewise` here, with the
conventions the derivatives rely on: `Max(a, b) = where(a > b, a, b)`,
`Min(a, b) = where(a < b, a, b)` (an argument free of the inputs taken as the last, so at a
tie with one that holds them the slope is its: Max(0, x)' = Max(x, 0)' = 0 at 0),
`Heaviside(0) = 0`, `sign(0) = 0`.

`uniform(lo, hi)` is a random draw, numbered in the order the draws appear in the text
(actgen.functions.uniform); its bounds may not depend on the inputs.
"""
from __future__ import annotations

import ast
import math
from fractions import Fraction
from typing import Callable, Collection, Mapping

import sympy

from .functions import erfc, expm1, log1p, sigmoid, softplus, uniform

MAX_FORMULA_LENGTH = 4000
MAX_DEPTH = 64
#: Numbers beyond float32's range are refused: the generated code computes float32 (and
#: 16-bit) data in float32, where torch refuses such a number as an operand.
FLOAT32_MAX = 3.4028234663852886e38
MAX_NODES = 2000
MAX_INT_POWER = 64
#: operators whose left-nested chains are one level of nesting (a sum's terms, a product's factors)
_CHAINS = {ast.Add: 1, ast.Sub: 1, ast.Mult: 2, ast.Div: 2}


class FormulaError(ValueError):
    """A formula that is not in the formula language; the message says what and where."""


class UnknownName(FormulaError):
    """A name the formula uses that is none of its variables, functions or constants."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


def shown(value, limit: int = 60) -> str:
    """value as an error message shows it: at most limit characters; a long rational number
    to 3 digits (5.26e+127: an integer past Python's 4300-digit limit for str has no text)."""
    if isinstance(value, sympy.Rational) and max(abs(value.p), value.q).bit_length() > 64:
        return sympy.sstr(sympy.Float(value, 3))
    try:
        text = sympy.sstr(value)
    except ValueError:
        return "(an expression with a number too long to print)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _piecewise(*pairs):
    return sympy.Piecewise(*pairs)


#: Max and Min take at most this many arguments (each pair nests its arguments twice).
MAX_EXTREMUM_ARGS = 8


def _extremum(name, compare, args):
    if not 2 <= len(args) <= MAX_EXTREMUM_ARGS:
        raise FormulaError(f"{name} takes 2 to {MAX_EXTREMUM_ARGS} arguments, got {len(args)}")
    return _pairwise(compare, args)


def _pairwise(compare, args):
    """The extremum by halves: each argument nests log2(n) levels deep, not n."""
    if len(args) == 1:
        return args[0]
    half = len(args) // 2
    a, b = _pairwise(compare, args[:half]), _pairwise(compare, args[half:])
    return _piecewise((a, compare(a, b)), (b, True))


def _max(*args):
    return _extremum("Max", sympy.StrictGreaterThan, args)


def _min(*args):
    return _extremum("Min", sympy.StrictLessThan, args)


def _sign(u):
    return _piecewise((sympy.S.One, u > 0), (sympy.S.NegativeOne, u < 0), (sympy.S.Zero, True))


def _heaviside(u, *rest):
    if rest:
        raise FormulaError("Heaviside takes 1 argument (Heaviside(0) is 0)")
    return _piecewise((sympy.S.One, u > 0), (sympy.S.Zero, True))


def _where(cond, a, b):
    return _piecewise((a, cond), (b, True))


def _uniform(lo, hi, index):
    return uniform(lo, hi, sympy.Integer(index))


def _unary(fn):
    def call(*args):
        if len(args) != 1:
            raise FormulaError(f"{fn.__name__} takes 1 argument, got {len(args)}")
        return fn(args[0])

    return call


# name -> its builder: the sympy expression of a call from its arguments (checked there)
FUNCTIONS: Mapping[str, Callable] = {
    "exp": _unary(sympy.exp),
    "log": _unary(sympy.log),
    "log1p": _unary(log1p),
    "expm1": _unary(expm1),
    "sqrt": _unary(sympy.sqrt),
    "sin": _unary(sympy.sin),
    "cos": _unary(sympy.cos),
    "tan": _unary(sympy.tan),
    "tanh": _unary(sympy.tanh),
    "sinh": _unary(sympy.sinh),
    "cosh": _unary(sympy.cosh),
    "atan": _unary(sympy.atan),
    "asinh": _unary(sympy.asinh),
    "erf": _unary(sympy.erf),
    "erfc": _unary(erfc),
    "sigmoid": _unary(sigmoid),
    "softplus": _unary(softplus),
    "abs": _unary(sympy.Abs),
    "Abs": _unary(sympy.Abs),
    "sign": _unary(_sign),
    "max": _max,
    "Max": _max,
    "min": _min,
    "Min": _min,
    "where": _where,
    "Heaviside": _heaviside,
    "uniform": _uniform,
}
NAMED_CONSTANTS: Mapping[str, sympy.Expr] = {"pi": sympy.pi, "E": sympy.E}
# Names a user may not give to an input, param or constant.
RESERVED_NAMES = frozenset(FUNCTIONS) | frozenset(NAMED_CONSTANTS) | {"Piecewise", "True", "False"}

_COMPARE = {
    ast.Lt: sympy.StrictLessThan,
    ast.LtE: sympy.LessThan,
    ast.Gt: sympy.StrictGreaterThan,
    ast.GtE: sympy.GreaterThan,
}
_ARITH = {ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow}
_LOGIC = {ast.BitAnd: sympy.And, ast.BitOr: sympy.Or}
# operators outside the language, by their spelling (x^2 is Python's exclusive or)
_OPERATORS = {ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
              ast.BitXor: "^ (for a power write **)", ast.BitAnd: "&", ast.BitOr: "|"}


def _within_float32(c: sympy.Number) -> bool:
    """Whether a number's magnitude is at most float32's largest."""
    if c.is_Rational:
        return abs(c.p).bit_length() - c.q.bit_length() < 127 or Fraction(abs(c.p), c.q) <= FLOAT32_MAX
    return bool(abs(c) <= FLOAT32_MAX)


def make_symbol(name: str) -> sympy.Symbol:
    """The sympy symbol of a formula variable (inputs, params and constants are real)."""
    return sympy.Symbol(name, real=True)


def parse_formula(text: str, names: Mapping[str, sympy.Symbol], inputs: Collection[str] = ()) -> sympy.Expr:
    """Parse `text` over the variables `names` into a sympy expression.

    `inputs` are the names the bounds of a `uniform(lo, hi)` draw may not use.
    Raises FormulaError with a message naming the offending construct and its column.
    """
    tree = _syntax_tree(text)
    builder = _Builder(names, inputs)
    expr = builder.expr(tree.body, 0)
    if not isinstance(expr, sympy.Expr) or isinstance(expr, (sympy.Rel, sympy.logic.boolalg.BooleanFunction)):
        raise FormulaError("must be an arithmetic expression, not a condition")
    for atom in expr.atoms(sympy.Number):
        if not math.isfinite(float(atom)):
            raise FormulaError(f"contains a number that is not finite: {shown(atom)}")
    if expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise FormulaError("evaluates to an infinite or undefined constant")
    if expr.has(sympy.I):
        raise FormulaError(f"has complex values (the square root or log of a negative number?): {shown(expr, 80)}")
    return expr


def _syntax_tree(text: str) -> ast.Expression:
    """text's syntax tree as one expression, within the length and size limits."""
    if not isinstance(text, str):
        raise FormulaError("must be a string")
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"is {len(text)} characters long; the limit is {MAX_FORMULA_LENGTH}")
    if not text.strip():
        raise FormulaError("is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FormulaError(f"is not valid Unicode text (a lone surrogate at column {exc.start + 1})") from None
    if "#" in text:     # (Python would read the rest of the joined lines as a comment)
        raise FormulaError(f"'#' at column {text.index('#') + 1}: a formula holds no comments "
                           "(a YAML comment goes outside the formula's text)")
    try:                # (a YAML block's lines are one expression: a newline is a space)
        tree = ast.parse(" ".join(text.strip().splitlines()), mode="eval")
    except SyntaxError as exc:
        where = (f" at column {exc.offset}" if exc.offset else
                 " at the end (the expression is incomplete)" if exc.offset == 0 else "")    # (Python's offset 0)
        raise FormulaError(f"syntax error{where}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise FormulaError("is too deeply nested or too large") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise FormulaError(f"has {count} syntax nodes; the limit is {MAX_NODES}")
    return tree


def parse_condition(text: str, names: Mapping[str, sympy.Symbol]) -> sympy.Basic:
    """Parse a condition over the variables `names` (comparisons with < <= > >=, combined
    with & | ~: a spec's checks on its constants) into a sympy boolean that is not always
    true or always false."""
    cond = _Builder(names).cond(_syntax_tree(text).body, 0)
    if cond.has(uniform):
        raise FormulaError("draws (uniform) have no place in a condition on the constants")
    if cond in (sympy.true, sympy.false):
        raise FormulaError(f"is always {'true' if cond is sympy.true else 'false'}")
    return cond


class _Builder:
    def __init__(self, names: Mapping[str, sympy.Symbol], inputs: Collection[str] = ()):
        self.names = names
        self.inputs = frozenset(inputs)
        self.draws = 0          # uniform(...) calls so far: the next draw's index

    @staticmethod
    def _at(node, what) -> str:
        """what, and where in the formula node is."""
        col = getattr(node, "col_offset", None)
        return f"{what} at column {col + 1}" if col is not None else what

    def _fail(self, node, what):
        raise FormulaError(self._at(node, what))

    def _depth(self, node, depth):
        if depth > MAX_DEPTH:
            self._fail(node, f"nests deeper than {MAX_DEPTH} levels")
        return depth + 1

    # --- arithmetic -------------------------------------------------------------------
    def expr(self, node, depth):
        depth = self._depth(node, depth)
        if isinstance(node, ast.Constant):
            return self._number(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.expr(node.operand, depth)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            # (a + b + c is ((a + b) + c) to Python: a sum's or a product's terms are one level,
            # however many there are - 64 weighted terms were "deeper than 64 levels")
            chained = isinstance(node.left, ast.BinOp) and _CHAINS.get(type(node.left.op), 0) == _CHAINS.get(type(node.op))
            left = self.expr(node.left, depth - 1 if chained else depth)
            right = self.expr(node.right, depth)
            return self._constant(node, self._arith(node, left, right))
        if isinstance(node, ast.Call):
            return self._constant(node, self._call(node, depth))
        if isinstance(node, ast.BinOp) and type(node.op) in _LOGIC and not any(
                isinstance(side, (ast.Compare, ast.BinOp, ast.UnaryOp)) for side in (node.left, node.right)):
            # x > 0 & x < 1 is x > (0 & x) < 1: & binds tighter than a comparison
            self._fail(node, f"'{_OPERATORS[type(node.op)]}' combines conditions and binds tighter than a "
                             "comparison: put each comparison in parentheses, as (x > 0) & (x < 1)")
        if isinstance(node, (ast.Compare, ast.BoolOp)) or (
            isinstance(node, ast.BinOp) and type(node.op) in _LOGIC
        ):
            self._fail(node, "a condition is only allowed inside where(...) or Piecewise(...)")
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            self._fail(node, f"the operator {_OPERATORS[type(node.op)]} is not part of the formula language")
        self._fail(node, f"'{type(node).__name__}' is not part of the formula language")

    def _constant(self, node, value):
        """value, where it is a number: a real one within float32's range (sqrt(-1),
        log(0), exp(100) are refused here, where they are written)."""
        if not isinstance(value, sympy.Expr) or not value.is_number or value.has(uniform):
            return value
        if value.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
            self._fail(node, "a constant here is infinite or undefined (a division by zero, or the log of 0?)")
        try:
            v = complex(value if value.is_Number else value.evalf(30))
        except (ArithmeticError, ValueError, TypeError):
            self._fail(node, f"the constant {shown(value)} cannot be evaluated (it overflows)")
        if v.imag != 0 or math.isnan(v.real):
            self._fail(node, f"the constant {shown(value)} is not a real number")
        if not abs(v.real) <= FLOAT32_MAX:
            self._fail(node, f"the constant {shown(value)} is beyond float32's range (+-3.4e38)")
        return value

    def _number(self, node):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._fail(node, f"literal {value!r} is not a number")
        if isinstance(value, float):
            if not math.isfinite(value):
                self._fail(node, "number is not finite")
            if abs(value) > FLOAT32_MAX:
                self._fail(node, f"number {value:g} is beyond float32's range (+-3.4e38)")
            return sympy.Float(value) if not value.is_integer() or abs(value) > 2**53 else sympy.Integer(int(value))
        if abs(value) > 2**53:
            self._fail(node, "integer literal is too large")
        return sympy.Integer(value)

    def _name(self, node):
        if node.id in self.names:
            return self.names[node.id]
        if node.id in NAMED_CONSTANTS:
            return NAMED_CONSTANTS[node.id]
        if node.id in FUNCTIONS:
            self._fail(node, f"function '{node.id}' used without calling it")
        known = ", ".join(sorted(self.names)) or "(none)"
        raise UnknownName(self._at(node, f"unknown name '{node.id}' (known names: {known}; constants: pi, E)"), node.id)

    def _arith(self, node, left, right):
        op = type(node.op)
        if op is ast.Add:
            return self._folded(node, left + right)
        if op is ast.Sub:
            return self._folded(node, left - right)
        if op is ast.Mult:
            return self._folded(node, left * right)
        if op is ast.Div:
            if right == 0:
                self._fail(node, "division by zero")
            return self._folded(node, left / right)
        # Pow: keep purely numeric powers and exponents small so nothing can explode.
        if right.is_number:
            r = float(right)
            if abs(r) > MAX_INT_POWER:
                self._fail(node, f"exponent {r:g} is larger than {MAX_INT_POWER} in magnitude")
            if left.is_number and not left.has(uniform):
                try:
                    value = float(left) ** r
                except (OverflowError, ZeroDivisionError):
                    self._fail(node, "numeric power overflows")
                if isinstance(value, complex) or not math.isfinite(value):
                    self._fail(node, "numeric power is not a finite real number")
                if left.is_Integer and right.is_Integer and right >= 0:
                    return left**right
                return sympy.Float(value)
        power = left**right
        if right.is_number:     # sympy folds (x**a)**b into x**(a*b), (c*x)**b into c**b * x**b
            for p in power.atoms(sympy.Pow):
                if p.exp.is_number and not abs(float(p.exp)) <= MAX_INT_POWER:
                    self._fail(node, f"the power {shown(p)} this makes has an exponent larger than "
                                     f"{MAX_INT_POWER} in magnitude (a power of a power multiplies them)")
            for c in power.atoms(sympy.Rational):
                if not _within_float32(c):
                    self._fail(node, f"the number {shown(c)} this makes is beyond float32's range (+-3.4e38)")
        return power

    def _folded(self, node, value):
        """value, where the numbers sympy folds into it (a product's coefficient, a sum's
        constant: x*1e30*1e15 is 1e45*x) are within float32's range, as a number written
        is."""
        for c in (value, *value.args):
            if c.is_Number and not _within_float32(c):
                self._fail(node, f"the number {shown(c)} this makes is beyond float32's range (+-3.4e38)")
        return value

    # --- calls ------------------------------------------------------------------------
    def _call(self, node, depth):
        if not isinstance(node.func, ast.Name):
            self._fail(node, "only plain function names can be called")
        if node.keywords:
            self._fail(node, f"{node.func.id}() takes no keyword arguments")
        name = node.func.id
        if name == "Piecewise":
            return self._piecewise(node, depth)
        if name not in FUNCTIONS:
            if name in self.names:
                self._fail(node, f"'{name}' is a variable, not a function")
            known = ", ".join(sorted(FUNCTIONS)) + ", Piecewise"
            self._fail(node, f"unknown function '{name}' (known functions: {known})")
        if name == "where":
            if len(node.args) != 3:
                self._fail(node, f"where takes 3 arguments (cond, a, b), got {len(node.args)}")
            args = [self.cond(node.args[0], depth), self.expr(node.args[1], depth), self.expr(node.args[2], depth)]
        elif name == "uniform":
            return self._uniform(node, depth)
        else:
            args = [self.expr(a, depth) for a in node.args]
            if FUNCTIONS[name] in (_max, _min):
                # at a tie the extremum is its last argument: one free of the inputs goes last,
                # so Max(0, x) is Max(x, 0) (slope 0 at 0) and Min(1, x) is Min(x, 1)
                args.sort(key=lambda a: not any(s.name in self.inputs for s in a.free_symbols))
        return self._apply(node, name, FUNCTIONS[name], args)

    def _apply(self, node, name, fn, args):
        """fn(*args), where sympy's own evaluation at numbers may fail (a comparison of a
        value that is not real, an overflow): a FormulaError."""
        try:
            return fn(*args)
        except FormulaError as exc:
            self._fail(node, str(exc))
        except (ArithmeticError, ValueError, TypeError, KeyError, RecursionError):
            self._fail(node, f"{name}(...) of these arguments cannot be built (a value that is not real, "
                             "or a condition on random draws alone?)")

    def _uniform(self, node, depth):
        if len(node.args) != 2:
            self._fail(node, f"uniform takes 2 arguments (lo, hi), got {len(node.args)}")
        lo, hi = (self.expr(a, depth) for a in node.args)
        for bound in (lo, hi):
            used = sorted(s.name for s in bound.free_symbols if s.name in self.inputs)
            if used:
                self._fail(node, f"uniform(lo, hi): the bounds must not depend on the input {', '.join(used)} "
                                 "(they are numbers, constants or params)")
            if bound.has(uniform):
                self._fail(node, "uniform(lo, hi): the bounds must not contain another uniform(...)")
        index = self.draws
        self.draws += 1
        return FUNCTIONS["uniform"](lo, hi, index)

    def _piecewise(self, node, depth):
        if not node.args:
            self._fail(node, "Piecewise needs at least one (expr, cond) pair")
        pairs = []
        for i, arg in enumerate(node.args):
            if not isinstance(arg, ast.Tuple) or len(arg.elts) != 2:
                self._fail(arg, "each Piecewise argument must be a pair (expr, cond)")
            value = self.expr(arg.elts[0], depth)
            cond_node = arg.elts[1]
            if isinstance(cond_node, ast.Constant) and cond_node.value is True:
                cond = sympy.true
                if i != len(node.args) - 1:
                    self._fail(cond_node, "the (expr, True) pair must come last in Piecewise")
            else:
                cond = self.cond(cond_node, depth)
            pairs.append((value, cond))
        if pairs[-1][1] is not sympy.true:
            self._fail(node, "Piecewise must end with an (expr, True) pair")
        return self._apply(node, "Piecewise", sympy.Piecewise, pairs)

    # --- conditions -------------------------------------------------------------------
    def cond(self, node, depth):
        depth = self._depth(node, depth)
        if isinstance(node, ast.Compare):
            parts = []
            left = self.expr(node.left, depth)
            for op, comparator in zip(node.ops, node.comparators):
                if type(op) not in _COMPARE:
                    self._fail(node, f"comparison '{type(op).__name__}' is not allowed (use < <= > >=)")
                right = self.expr(comparator, depth)
                try:
                    parts.append(_COMPARE[type(op)](left, right))
                except TypeError:       # sympy's "Invalid comparison of non-real ..."
                    self._fail(node, "compares a value that is not a real number")
                left = right
            return sympy.And(*parts) if len(parts) > 1 else parts[0]
        if isinstance(node, ast.BinOp) and type(node.op) in _LOGIC:
            args = [self.cond(node.left, depth), self.cond(node.right, depth)]
            return self._apply(node, "a condition", _LOGIC[type(node.op)], args)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return self._apply(node, "a condition", sympy.Not, [self.cond(node.operand, depth)])
        if isinstance(node, ast.BoolOp):
            self._fail(node, "use & and | to combine conditions, not 'and'/'or'")
        self._fail(node, "expected a condition (a comparison with < <= > >=, combined with & | ~)")
