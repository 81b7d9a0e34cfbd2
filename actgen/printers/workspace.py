"""The CPU fast variant's statements as operations on a workspace of chunk-sized buffers.

The torch printer writes an expression as Python evaluates it: every operation returns a new
tensor.  On the CPU fallback each of those is a chunk-sized allocation, and glibc's allocator
can hand chunk-sized memory back to the system and take it again as fresh pages: a page
fault per 4 KiB, about 1.7 us each on the 2-vCPU VM the benchmarks ran on, where adding the
page's floats takes 0.1 us (mish's fast forward took 2.6 ms a chunk in such a process, 0.41
ms in another).  Here the fast variant's printed
statements are rewritten so that every operation whose value has the chunk's shape writes
into a buffer of the workspace `_w` - with `out=`, or in place on a buffer whose value is
not used again - and a buffer is taken again once the value in it is dead:

    _t1 = _t0*(_t0 + 2.0)    ->    _t1 = torch.add(_t0, 2.0, out=_w[1]).mul_(_t0)

The operations, their operands and their order are the printed expression's own (Python's
`2.0 - t` is torch's rsub, -t + 2.0; `2.0/t` is t.reciprocal()*2.0, and so here): the values
are bit for bit those of the printed text.  Operations on params and constants alone (a
param's exp) keep their own small tensors.  The text parsed here is the printer's output,
never user input.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

WORKSPACE = "_w"

#: torch functions of one tensor with an in-place method of the same name (exp -> exp_).
UNARY = {"exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "tanh", "sinh", "cosh", "atan", "asinh",
         "erf", "erfc", "abs", "sigmoid", "reciprocal", "neg"}
#: torch functions of one tensor without an in-place method: into their argument's buffer as
#: out= (an elementwise op may write over the tensor it reads, element for element).
OUT_ONLY = {"special.erfcx"}
BINARY = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}
#: actgen.runtime functions that take out= and write their value there; those that may write
#: it into one of their own tensor arguments (one pass reading each element once)
RUNTIME_OUT = {"fma", "fnma", "select", "gt", "ge", "lt", "le", "mask_and", "mask_or", "mask_not", "clamp",
               "softplus", "hypot", "sqrt_square_plus", "scaled_input", "inverse_scale", "capped_exp", "rdiv"}
RUNTIME_IN_PLACE = {"fma", "fnma", "gt", "ge", "lt", "le", "capped_exp", "rdiv"}


class WorkspaceError(ValueError):
    pass


def _times(number: str) -> str:
    """The in-place product by a number that follows a reciprocal (Python's n/t), none for
    1.0: t * 1.0 is t, bit for bit."""
    return "" if number == "1.0" else f".mul_({number})"


def _negated_number(node):
    """-(a*c), -(c*a) or -(a/c) with c a number, as a*(-c), (-c)*a or a/(-c), and so on into
    the operands of a product or the numerator of a quotient (-(c*a*b) as (-c)*a*b): the same
    value bit for bit (rounding to nearest is symmetric), one operation fewer; else None."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div))):
        return None
    sides = ("right", "left") if isinstance(node.op, ast.Mult) else ("right",)
    for side in sides:
        c = getattr(node, side)
        if isinstance(c, ast.Constant) and isinstance(c.value, float):
            parts = {"left": node.left, "right": node.right, side: ast.Constant(-c.value)}
            return ast.BinOp(left=parts["left"], op=node.op, right=parts["right"])
    for side in ("left", "right") if isinstance(node.op, ast.Mult) else ("left",):
        folded = _negated_number(getattr(node, side))
        if folded is not None:
            parts = {"left": node.left, "right": node.right, side: folded}
            return ast.BinOp(left=parts["left"], op=node.op, right=parts["right"])
    return None


@dataclass
class _Value:
    code: str
    buf: int | None = None      # the workspace buffer it was computed into (owned by the expression)
    chunk: bool = False         # a chunk-shaped tensor
    scalar: bool = False        # a Python number


class _Buffers:
    def __init__(self):
        self.free: list[int] = []
        self.count = 0

    def take(self) -> int:
        if self.free:
            self.free.sort()
            return self.free.pop(0)
        self.count += 1
        return self.count - 1

    def give(self, k: int | None):
        if k is not None and k not in self.free:
            self.free.append(k)


class _Emitter:
    def __init__(self, chunk_names: Iterable[str], tensor_names: Iterable[str]):
        self.chunk = set(chunk_names)
        self.tensors = set(tensor_names)
        self.bufs = _Buffers()

    @staticmethod
    def _w(k: int) -> str:
        return f"{WORKSPACE}[{k}]"

    def _names(self, node) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}

    def value(self, node) -> _Value:
        names = self._names(node)
        if not names & self.chunk:         # numbers, or small tensors of params alone
            return _Value(ast.unparse(node), scalar=not names & self.tensors)
        if isinstance(node, ast.Name):
            return _Value(node.id, chunk=True)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return self.value(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            folded = _negated_number(node.operand)
            if folded is not None:
                return self.value(folded)
            return self._unary("neg", self.value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            return self._binary(BINARY[type(node.op)], self.value(node.left), self.value(node.right))
        if isinstance(node, ast.Call) and not node.keywords:
            func = ast.unparse(node.func)
            module, _, name = func.partition(".")
            if module == "torch" and name in UNARY and len(node.args) == 1:
                return self._unary(name, self.value(node.args[0]))
            if module == "torch" and name in OUT_ONLY and len(node.args) == 1:
                v = self.value(node.args[0])
                k = self.bufs.take() if v.buf is None else v.buf
                return _Value(f"torch.{name}({v.code}, out={self._w(k)})", k, chunk=True)
            if module == "_rt" and name == "select" and [ast.unparse(a) for a in node.args[1:]] == ["1.0", "0.0"]:
                return self.value(node.args[0])         # the 0/1 mask itself, bit for bit
            if module == "_rt" and name in RUNTIME_OUT:
                return self._runtime(name, [self.value(a) for a in node.args])
        raise WorkspaceError(f"no workspace form for {ast.unparse(node)}")

    def _unary(self, name: str, v: _Value) -> _Value:
        if v.buf is not None:
            return _Value(f"{v.code}.{name}_()", v.buf, chunk=True)
        k = self.bufs.take()
        return _Value(f"torch.{name}({v.code}, out={self._w(k)})", k, chunk=True)

    def _binary(self, op: str, a: _Value, b: _Value) -> _Value:
        """a op b as Python evaluates it (torch's reflected operators for a number on the left)."""
        if a.buf is not None:                               # in place on a's buffer
            self.bufs.give(b.buf)
            return _Value(f"{a.code}.{op}_({b.code})", a.buf, chunk=True)
        if b.buf is not None:
            k = b.buf
            if op in ("add", "mul"):                        # exactly commutative
                return _Value(f"{b.code}.{op}_({a.code})", k, chunk=True)
            if op == "sub" and a.scalar:                    # Tensor.__rsub__: rsub(b, a) = -b + a
                return _Value(f"{b.code}.neg_().add_({a.code})", k, chunk=True)
            if op == "div" and a.scalar:                    # Tensor.__rdiv__: b.reciprocal() * a
                return _Value(f"{b.code}.reciprocal_(){_times(a.code)}", k, chunk=True)
            return _Value(f"torch.{op}({a.code}, {b.code}, out={self._w(k)})", k, chunk=True)
        k = self.bufs.take()
        out = self._w(k)
        if not a.scalar:
            return _Value(f"torch.{op}({a.code}, {b.code}, out={out})", k, chunk=True)
        if op in ("add", "mul"):
            return _Value(f"torch.{op}({b.code}, {a.code}, out={out})", k, chunk=True)
        if op == "sub":
            return _Value(f"torch.neg({b.code}, out={out}).add_({a.code})", k, chunk=True)
        if op == "div":
            return _Value(f"torch.reciprocal({b.code}, out={out}){_times(a.code)}", k, chunk=True)
        return _Value(f"torch.pow({a.code}, {b.code}, out={out})", k, chunk=True)

    def _runtime(self, name: str, args: Sequence[_Value]) -> _Value:
        own = [v.buf for v in args if v.buf is not None]
        if name in RUNTIME_IN_PLACE and own:
            k = own[0]
        else:
            k = self.bufs.take()
        for b in own:
            if b != k:
                self.bufs.give(b)
        text = ", ".join(v.code for v in args)
        return _Value(f"_rt.{name}({text}, out={self._w(k)})", k, chunk=True)


def workspace_statements(statements: Sequence[tuple[str, str]], chunk_names: Iterable[str],
                         tensor_names: Iterable[str], outputs: Sequence[str]) -> tuple[list[tuple[str, str]], int]:
    """(target, printed expression) statements, in order, rewritten onto the workspace: the
    new statements and the number of buffers they use (the outputs' last).  chunk_names: the
    chunk-shaped tensors on entry (inputs, draws); tensor_names: the other tensors (params;
    the rest are numbers);
    outputs: the targets returned, in order.  A target whose value has the chunk's shape
    holds its buffer until its last use; the j-th output that is computed (not a name or a
    number) is computed in the buffer after all the others, _w[count + j], where the caller
    may put the output's own memory (the forward's result: no copy)."""
    em = _Emitter(chunk_names, tensor_names)
    slots = {name: j for j, name in enumerate(outputs)}
    trees = [(target, ast.parse(text, mode="eval").body) for target, text in statements]
    last_use: dict[str, int] = {}
    for i, (_, tree) in enumerate(trees):
        for n in ast.walk(tree):
            if isinstance(n, ast.Name):
                last_use[n.id] = i
    owner: dict[str, int] = {}          # target -> the buffer holding its value
    out = []
    for i, (target, tree) in enumerate(trees):
        v = em.value(tree)
        if v.chunk:
            em.chunk.add(target)
            if v.buf is not None:
                owner[target] = v.buf
            elif isinstance(tree, ast.Name) and tree.id in owner:       # another name for a value
                owner[target] = owner[tree.id]
        elif not v.scalar:
            em.tensors.add(target)
        code = v.code
        if target in slots and target in owner and list(owner.values()).count(owner[target]) == 1:
            # the output's buffer, here and wherever this statement used it before: its slot
            code = code.replace(f"{WORKSPACE}[{owner[target]}]", f"{WORKSPACE}[@{slots[target]}]")
            em.bufs.give(owner.pop(target))
        out.append((target, code))
        for name, k in list(owner.items()):
            alive = name in slots or last_use.get(name, -1) > i
            shared = any(o == k and other != name for other, o in owner.items())
            if not alive and not shared:
                em.bufs.give(k)
                del owner[name]
            elif not alive:
                del owner[name]
    # the buffers still used, numbered from 0, then the outputs' slots
    used = sorted({int(k) for _, c in out for k in re.findall(rf"{WORKSPACE}\[(\d+)\]", c)})
    number = {k: i for i, k in enumerate(used)}
    count = len(used)

    def renumber(m):
        k = m.group(1)
        return f"{WORKSPACE}[{count + int(k[1:]) if k.startswith('@') else number[int(k)]}]"

    out = [(t, re.sub(rf"{WORKSPACE}\[(@?\d+)\]", renumber, c)) for t, c in out]
    return out, count + len(slots)
