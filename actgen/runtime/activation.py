"""`Activation`: the per-op runtime object generated modules create.

It registers the forward and backward compute as torch.library custom ops (opaque to
torch.compile, with fake implementations for tracing), picks Triton kernels or the eager
torch fallback per call, and implements what the generated autograd.Function classes
delegate to: saving only inputs and params, recomputing in backward, a differentiable
backward (double backward from the derived second derivatives), forward-mode AD (jvp)
and vmap.

An op whose formula has random draws (uniform(lo, hi)) takes a seed: None in evaluation mode,
where every draw is 1/2, and in training mode one int per call from torch's default CPU
generator (so torch.manual_seed reproduces a call).  Everything else is a function of the
seed: the kernels draw with Philox keyed by it (actgen.runtime.triton_lang.draw), the
fallback draws whole tensors from a torch.Generator seeded with it, and backward, double
backward and jvp draw the same values again with the generator the forward used; only the
seed is kept for backward, as an int.  Under torch.func.vmap(randomness='different') each
entry draws from its own seed, drawn from the call's (Activation.entry_seeds), and what
draws again (_Backward, _Tangent, _SecondOrder) splits the seed alike in its vmap rule.
"""
from __future__ import annotations

import math
import operator
import weakref
from typing import Callable, Sequence

import torch

from . import backend as _backend
from .layouts import halves_grads, inverse_order, memory_order, new_contiguous, permuted_back, rows_of
from .workspace import WORKSPACE, WORKSPACE_BYTES

_REGISTERED: dict[str, tuple] = {}
_cuda_device = getattr(torch._C, "_cuda_getDevice", None)     # the current GPU's index (a CUDA build)
_PLAIN = (torch.Tensor, torch.nn.Parameter)     # what a launch plan takes as a param
_launch = None       # actgen.runtime.launch once a kernel runs (it imports triton)


def _load_launch():
    global _launch
    from . import launch
    _launch = launch
    return launch

#: Seeds are in [0, SEED_BOUND - draws): the key seed + k of every draw k fits in an int32.
SEED_BOUND = 2**31


def dim_index(v, name: str, what: str, ndim: int | None = None) -> int:
    """v as an int (a dim), or a TypeError that says so (a bool is not one); with ndim, an
    IndexError where it is out of a tensor of ndim dims' range, as torch's dims."""
    try:
        if isinstance(v, bool):
            raise TypeError
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name}: {what} must be an int, got {v!r}") from None
    if ndim is not None and not -ndim <= v < ndim:
        raise IndexError(f"{name}: {what} {v} is out of range for a {ndim}-dim input (expected in [{-ndim}, {ndim - 1}])")
    return v


def _real(v, name: str, what: str, arg: str) -> float:
    """v as a float where it is a real number (an int, a float, a numpy scalar, a one-element
    tensor); text, None and complex numbers are a TypeError naming the argument."""
    if v.__class__ is float:
        return v
    if not hasattr(type(v), "__float__"):
        raise TypeError(f"{name}: {what} '{arg}' must be a real number, got {type(v).__name__}")
    try:
        return float(v)
    except (TypeError, ValueError, RuntimeError):      # (a tensor or an array of several values)
        shape = tuple(getattr(v, "shape", ()))
        raise TypeError(f"{name}: {what} '{arg}' must be a real number (one value), got a {type(v).__name__} "
                        f"of shape {shape}" + (" (a param's values per channel: a tensor)" if what == "param" else "")) from None


def _contiguous(tensors) -> bool:
    """Whether every tensor is contiguous (a loop: no generator per call)."""
    for t in tensors:
        if not t.is_contiguous():
            return False
    return True


def _one_plan_form(inputs):
    """Activation._plan_form of a one-input op's inputs."""
    return None if inputs[0].is_contiguous() else False


def _any_requires_grad(inputs, params) -> bool:
    """Whether any input or param requires grad (a loop: no generator per call)."""
    for t in inputs:
        if t.requires_grad:
            return True
    for p in params:
        if p.requires_grad:
            return True
    return False


def compute_dtype(dtype: torch.dtype, wide: bool = False) -> torch.dtype:
    """What the fallback computes a dtype's values in: float64 for float64, or where the op
    computes that direction in float64 (`wide`, see actgen.precision); float32 otherwise."""
    return torch.float64 if dtype == torch.float64 or wide else torch.float32


def expand_param(p: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    """A (1,) or (C,) param as something that broadcasts against the input."""
    if p.numel() == 1:
        return p.reshape(())
    return p.reshape((-1,) + (1,) * (ndim - 1 - channel_dim))


def reduce_to_param(v: torch.Tensor, p: torch.Tensor, shape, channel_dim: int) -> torch.Tensor:
    """Sum a per-element gradient to the param's shape."""
    v = v.expand(shape) if isinstance(v, torch.Tensor) else torch.full(shape, v, dtype=p.dtype, device=p.device)
    if p.numel() == 1:
        return v.sum().reshape(1).to(p.dtype)
    dims = [d for d in range(len(shape)) if d != channel_dim]
    return (v.sum(dims) if dims else v).to(p.dtype)


class Found:
    """What the fallback's checks found of one eager call's inputs, kept for its backward:
    `finite`, every input finite.  The backward takes it only where autograd hands back the
    very tensors the forward checked (`holds`: a saved-tensors hook may hand back others;
    autograd refuses ones changed in place since), and so skips the checks of finiteness a
    second pass over the same inputs would repeat."""

    __slots__ = ("finite", "_refs")

    def __init__(self, inputs):
        self.finite = False
        self._refs = [weakref.ref(t) for t in inputs]

    def holds(self, inputs) -> bool:
        """Whether inputs are the tensors the forward checked."""
        return len(inputs) == len(self._refs) and all(r() is t for r, t in zip(self._refs, inputs))


def _sum(t: torch.Tensor, dim=None) -> torch.Tensor:
    """t's sum (over dim), float16's in float32 (float16's largest is 65504); the whole sum
    of rows apart (layouts.rows_of: a gated op's halves) row by row first (torch sums such a
    bfloat16 tensor from a float32 copy: 235 against 45 us for 256 x 2048 halves on one
    core of a 2-vCPU Xeon VM)."""
    dtype = torch.float32 if t.dtype == torch.float16 else None
    if dim is not None:
        return t.sum(dim, dtype=dtype)
    if not t.is_contiguous():
        rows = rows_of([t])
        if rows is not None:
            return rows[0][0].sum(1, dtype=dtype).sum()
    return t.sum(dtype=dtype)


def _output(y, inputs, borrowed: bool = False) -> torch.Tensor:
    """A fallback's f as the op's output: the input's shape and dtype, contiguous, never an
    input itself nor (borrowed) a workspace buffer."""
    x = inputs[0]
    y = as_tensor(y, x)
    if y.dtype != x.dtype:
        return y.to(x.dtype).contiguous()
    if borrowed or any(y is t for t in inputs):
        return y.clone(memory_format=torch.contiguous_format)
    return y.contiguous()


def _put_flat(out: torch.Tensor, idx: torch.Tensor, v: torch.Tensor):
    """out's elements at flat (row-major) indices idx = v: out contiguous, or rows of it
    apart (layouts.rows_of: the halves of one gradient buffer)."""
    if out.is_contiguous():
        out.view(-1).index_copy_(0, idx, v)
    else:
        (rows,), _ = rows_of([out])
        n = rows.shape[1]
        rows.index_put_((torch.div(idx, n, rounding_mode="floor"), idx % n), v)


def _like_input(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An input's gradient g laid out as the (contiguous) input, where a product with a grad
    laid out otherwise (a permuted, dense grad_output) took the grad's strides; an input in
    another memory order is computed in it and permuted back (Activation.backward_impl)."""
    return g.contiguous() if t.is_contiguous() and not g.is_contiguous() else g


def as_tensor(v, like: torch.Tensor) -> torch.Tensor:
    """Generated expressions can fold to a number (d/dx of 2*x); give it the input's shape."""
    if isinstance(v, torch.Tensor):
        return v if v.shape == like.shape else v.expand(like.shape)
    return torch.full_like(like, v)


class Activation:
    def __init__(
        self,
        *,
        name: str,
        key: str,
        inputs: Sequence[str],
        params: Sequence[tuple[str, bool]],
        constants: Sequence[str],
        forward_torch: Callable,
        derivatives_torch: Callable,
        second_derivatives_torch: Callable,
        forward_torch_fast: Callable | None = None,
        derivatives_torch_fast: Callable | None = None,
        fast_buffers: tuple[int, int] = (0, 0),
        fast_any_input: tuple[bool, bool] = (False, False),
        forward_native: Callable | None = None,
        backward_native: Callable | None = None,
        native_trusted: dict | None = None,
        native_any_input: tuple[bool, bool] = (False, False),
        forward_kernel=None,
        backward_kernel=None,
        draws: int = 0,
        float64_forward: bool = False,
        float64_backward: bool = False,
        float64_16bit: bool = False,
    ):
        self.name = name
        self.inputs = tuple(inputs)
        self.param_names = tuple(p for p, _ in params)
        self.per_channel = tuple(pc for _, pc in params)
        self.constants = tuple(constants)
        self.n_inputs = len(self.inputs)
        self.n_tensors = self.n_inputs + len(self.param_names)
        self.forward_torch = forward_torch
        self.derivatives_torch = derivatives_torch
        self.second_derivatives_torch = second_derivatives_torch
        self.forward_torch_fast = forward_torch_fast
        self.derivatives_torch_fast = derivatives_torch_fast
        # the fast functions' workspace buffers (forward, derivatives), and whether each runs
        # on any input (a block without guards) or only on finite ones
        self.fast_buffers = tuple(fast_buffers)
        self.fast_any_input = tuple(fast_any_input)
        # torch's own kernels where the formula is one of torch's activations, or one times a
        # gate input (actgen.native): f into a given output, and grad * df/d(input i) into
        # the i-th of a list of outputs; {dtype name: (forward window, backward window)}: the
        # first input's values they are trusted with (open intervals; None: none; a gate:
        # finite), and where native_any_input says so any input of a trusted dtype
        self.forward_native = forward_native
        self.backward_native = backward_native
        self.native_trusted = dict(native_trusted or {})
        self.native_any_input = tuple(native_any_input)
        self._trusted: dict = {}        # native_trusted by torch dtype (asked on every call)
        self.forward_kernel = forward_kernel
        self.backward_kernel = backward_kernel
        self.n_draws = draws
        # forward / backward computed in float64 for every input dtype (actgen.precision):
        # float32 evaluation of the formula's form measured beyond the accuracy target
        self.float64_forward = float64_forward
        self.float64_backward = float64_backward
        # ... and with 16-bit data on the kernels too: where the spec asks (precision: float64);
        # a measured need is a float32 error beyond the target, 2**16 times below a bfloat16 ULP
        self.float64_16bit = float64_16bit
        # launch plans (launch.Plan): for the forward and backward of an op without draws;
        # keyed on the input's shape and the channel dim where a param may be per channel,
        # on its shape and strides where a gated op's inputs are not contiguous (else on its size)
        self.plans_forward = self.plans_backward = not draws
        self._plan_by_shape = any(self.per_channel)
        # _plan_form(inputs): how launch plans take these inputs: None where they are
        # contiguous; a gated op's inputs of one shape and strides that are not (the halves of
        # one tensor, say), for an op without per-channel params: those strides (plans are
        # made for rows: launch.Plan); else False (no plan)
        self._plan_form = _one_plan_form if self.n_inputs == 1 else self._gated_plan_form
        self.core = self.function = None
        self.fwd_op, self.bwd_op = _register(f"{name}_{key}", self)

    def bind(self, core, function):
        """The generated autograd.Function classes (core: no jvp, for torch.compile)."""
        self.core, self.function = core, function

    # --- argument checking (runs before autograd, in Python) --------------------------
    def call(self, inputs, params, constants, channel_dim, training=False):
        compiling = torch.compiler.is_compiling()
        if self.plans_forward and not compiling and _launch is not None and _launch.TUNER.plans:
            y = self._planned_call(inputs, params, constants, channel_dim)
            if y is not None:
                return y
        x = inputs[0]
        for name, t in zip(self.inputs, inputs):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{self.name}: input '{name}' must be a tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{self.name}: input '{name}' must be a floating-point tensor, got {t.dtype}")
            if t.layout is not torch.strided:
                raise TypeError(f"{self.name}: input '{name}' must be a dense tensor, got layout {t.layout}")
        if self.n_inputs == 2 and inputs[0].shape != inputs[1].shape:
            raise ValueError(f"{self.name}: inputs must have the same shape, got {tuple(inputs[0].shape)} and {tuple(inputs[1].shape)}")
        if params:
            params = tuple(     # (a number, or a 0-dim tensor as F.prelu takes one: shape (1,))
                (p if p.dim() else p.reshape(1)) if isinstance(p, torch.Tensor)
                else torch.tensor([_real(p, self.name, "param", name)], dtype=compute_dtype(x.dtype), device=x.device)
                for name, p in zip(self.param_names, params)
            )
        if channel_dim.__class__ is not int:
            channel_dim = dim_index(channel_dim, self.name, "channel_dim")
        channels = 1
        for name, p, pc in zip(self.param_names, params, self.per_channel):
            if not p.is_floating_point():   # (complex: its imaginary part would be dropped; bool, ints: F.prelu's no too)
                raise TypeError(f"{self.name}: param '{name}' must be a floating-point tensor, got {p.dtype}")
            if p.dim() != 1:
                raise ValueError(f"{self.name}: param '{name}' must be 0-dim or 1-D of shape (1,) or (C,), got {tuple(p.shape)}")
            if p.numel() == 1:
                continue
            if not pc:
                raise ValueError(f"{self.name}: param '{name}' is shared and must have shape (1,), got {tuple(p.shape)}")
            if x.dim() < 2:
                raise ValueError(f"{self.name}: param '{name}' has {p.numel()} channels but the input has {x.dim()} dims (no channel dim); use a (1,) param")
            cd = dim_index(channel_dim, self.name, "channel_dim", x.dim()) % x.dim()
            if x.shape[cd] != p.numel():
                raise ValueError(f"{self.name}: channel-count mismatch: param '{name}' has {p.numel()} channels but the input has {x.shape[cd]} along dim {channel_dim}")
            if channels not in (1, p.numel()):
                raise ValueError(f"{self.name}: per-channel params disagree on the number of channels")
            channels = p.numel()
        if x.dim() >= 2 and any(self.per_channel) and not -x.dim() <= channel_dim < x.dim():
            dim_index(channel_dim, self.name, "channel_dim", x.dim())      # (its IndexError, (1,) params too)
        cd = channel_dim % x.dim() if x.dim() else 0
        if constants:
            constants = self._numbers(constants)
            if compiling:
                self._host_numbers(constants)
        if training.__class__ is not bool and not (isinstance(training, int) and training in (0, 1)):   # (F.rrelu's: a bool)
            raise TypeError(f"{self.name}: training must be True or False, got {training!r}")
        seed = self.new_seed() if training and self.n_draws else None
        if seed is not None and torch._C._get_tracing_state() is not None:
            import warnings

            warnings.warn(f"{self.name}: torch.jit.trace in training mode keeps this call's random draws for every call "
                          "of the trace; trace in evaluation mode (.eval()) for their mean", torch.jit.TracerWarning,
                          stacklevel=3)
        extra = (seed,) if self.n_draws else ()
        if compiling:
            if not no_forward_ad() or (torch._C._are_functorch_transforms_active()
                                       and (self.n_draws or not _in_vmap())):
                # (torch.compile drops an autograd.Function's jvp: tangents came back 0 or None;
                # under torch.func.grad it failed on the custom op, and a vmap's randomness was
                # ignored: these run the call outside the graph, as in eager; a vmap of an op
                # without draws stays in the graph)
                return _outside_the_graph(self.function.apply, *inputs, *params, *constants, cd, *extra)
            return self.core.apply(*inputs, *params, *constants, cd, *extra)
        if torch._C._are_functorch_transforms_active():
            return self.function.apply(*inputs, *params, *constants, cd, *extra)
        # plain eager use: the thin path (not under torch.jit.trace: there the Function, one
        # opaque node whatever the grad mode, where the thin path's data-dependent checks
        # would be traced as constants)
        if (not (torch.is_grad_enabled() and _any_requires_grad(inputs, params)) and no_forward_ad()
                and torch._C._get_tracing_state() is None):
            return self.forward_impl(list(inputs), list(params), list(constants), cd, seed)
        return _EagerFunction.apply(self, cd, seed, None, *inputs, *params, *constants)

    # --- launch plans ---------------------------------------------------------------------
    # A forward or backward whose launch an earlier call planned (launch.Plan: an op without
    # draws, on contiguous inputs and params like those the Triton kernels ran on, or a gated
    # op's inputs laid out alike: _plan_form) launches by the plan.  What decided the plan's
    # launch is its key (with the backend in use) or checked on every use: plain tensors,
    # laid out as the key says, on the current GPU.

    def _numbers(self, constants) -> tuple:
        """The constants as floats; a value that is not a real number is a TypeError, as
        torch's own ops refuse `negative_slope="0.2"` (float() would parse the text)."""
        return tuple(_real(c, self.name, "constant", name) for name, c in zip(self.constants, constants))

    def _host_numbers(self, constants) -> None:
        """Under torch.compile: a TypeError naming a constant whose value is not known when the
        graph is traced (a tensor's, read inside a fullgraph=True region: the kernels take
        their constants as numbers on the host, and the custom op's schema as floats; outside
        fullgraph torch.compile breaks the graph at the float() and this never sees one)."""
        for name, c in zip(self.constants, constants):
            if c.__class__ is not float:
                raise TypeError(f"{self.name}: constant '{name}' is a tensor's value, which torch.compile(fullgraph=True) "
                                "cannot read on the host: give it as a Python number")

    def _planned_call(self, inputs, params, constants, channel_dim):
        """call()'s result where a launch plan serves it, for a plain eager call (not
        compiling): its forward by the plan, or where autograd needs one the Function around
        it, its arguments checked as call() checked them where the plan was made; else None."""
        if torch._C._are_functorch_transforms_active() or not no_forward_ad() or torch._C._get_tracing_state() is not None:
            return None
        grad = torch.is_grad_enabled()
        needs_grad = False
        for t in inputs:
            if t.__class__ is not torch.Tensor or t.layout is not torch.strided:
                return None
            needs_grad = needs_grad or (grad and t.requires_grad)
        for c in constants:         # (else call() checks it: a numpy array, a tensor)
            if c.__class__ is not float and c.__class__ is not int:
                return None
        x = inputs[0]
        if self.n_inputs == 2 and inputs[1].shape != x.shape:
            return None
        form = self._plan_form(inputs)
        if form is False:
            return None
        for p in params:
            if p.__class__ not in _PLAIN or p.dim() != 1 or not p.is_contiguous():
                return None
            needs_grad = needs_grad or (grad and p.requires_grad)
        cd = self._channel_dim(x, channel_dim) if self._plan_by_shape else 0      # (else not in the key)
        if cd is None:
            return None
        plan = self._plan(self.forward_kernel, x, params, constants, cd, False, form)
        if plan is None:
            return None
        if needs_grad:
            if not self._plan_by_shape:
                cd = self._channel_dim(x, channel_dim)
                if cd is None:
                    return None
            if constants:
                constants = self._numbers(constants)
            return _planned_apply(self, cd, plan, inputs, params, constants)
        return plan.forward(inputs, params)

    def _channel_dim(self, x: torch.Tensor, channel_dim) -> int | None:
        """channel_dim as call() makes it (in [0, x.dim())), where it is an int, in x's range
        for an op whose params may be per channel (call() checks it there); else None
        (call()'s checks decide)."""
        if channel_dim.__class__ is not int:
            return None
        ndim = x.dim()
        if not ndim:
            return 0
        return channel_dim % ndim if -ndim <= channel_dim < ndim or not self._plan_by_shape else None

    def _gated_plan_form(self, inputs):
        """_plan_form of a gated op's inputs (of one dtype: a plan's key has a's)."""
        a, b = inputs
        if b.dtype is not a.dtype:
            return False
        if a.is_contiguous():
            return None if b.is_contiguous() else False
        if self._plan_by_shape:
            return False
        strides = a.stride()
        return strides if b.stride() == strides else False

    def _plan_key(self, kernel, x: torch.Tensor, device: int, params, constants, channel_dim, need_params=False,
                  form=None) -> tuple:
        if form is not None:
            size = (x.shape, form)
        else:
            size = (x.shape, channel_dim) if self._plan_by_shape else x.numel()
        if not params:
            return id(kernel), size, x.dtype, device, _backend._backend, constants
        return (id(kernel), size, x.dtype, device, _backend._backend, constants, need_params,
                *[(p.numel(), p.dtype) for p in params])       # (a kernel reads a param as its dtype)

    def _plan(self, kernel, x: torch.Tensor, params, constants, channel_dim, need_params=False, form=None):
        """The plan made for kernel on tensors like x (laid out as form says: _plan_form) and
        params, or None (also where x is on a GPU other than the current one, or a param is
        not contiguous)."""
        device = x.get_device()
        plan = _launch.TUNER.plans.get(self._plan_key(kernel, x, device, params, constants, channel_dim, need_params, form))
        if plan is not None:
            if device >= 0 and (_cuda_device is None or device != _cuda_device()):
                return None
            for p in params:
                if not p.is_contiguous():
                    return None
        return plan

    def _keep_plan(self, kernel, x: torch.Tensor, params, constants, channel_dim, need_params, form, make, *args) -> None:
        """Keep make(kernel, *args) (launch.plan_forward, plan_backward) for the next call on
        inputs like x, laid out as form says (_plan_form), where there is no plan for it yet
        and make makes one."""
        plans = _launch.TUNER.plans
        key = self._plan_key(kernel, x, x.get_device(), params, tuple(constants), channel_dim, need_params, form)
        if key not in plans and _contiguous(params):
            plan = make(kernel, *args)
            if plan is not None:
                if len(plans) >= _launch.MAX_PLANS:
                    plans.clear()
                plans[key] = plan

    def planned_grads(self, plan, grad, tensors, constants, channel_dim, needs):
        """backward_impl's gradients (None where not needed) of a call whose forward a plan
        launched (_planned_call), by the backward's plan, or None where there is none: the
        forward plan keeps the backward plans it led to (Plan.after), by whether the params'
        gradients are needed and the backend, so that the backward's lookup runs once per
        plan, not per call (its key is the forward's but for the kernel and need_params;
        the inputs, saved, are laid out as the forward's were)."""
        if _batched(grad):
            return None
        n = self.n_inputs
        inputs, params = tensors[:n], tensors[n:]
        need_params = bool(params) and any(needs[n:])
        link = (need_params, _backend._backend)
        plans = _launch.TUNER.plans
        kept = plan.after.get(link)
        if kept is not None and kept[0] is plans:       # (made with the tuner in use)
            backward = kept[1]
            device = inputs[0].get_device()
            if device >= 0 and device != _cuda_device():
                return None
        else:
            backward = self._plan(self.backward_kernel, inputs[0], params, constants, channel_dim, need_params,
                                  self._plan_form(inputs))
            if backward is None:
                return None
            plan.after[link] = (plans, backward)
        grads = backward.backward(grad, inputs, params)
        return [g if need else None for g, need in zip(grads, needs)]

    # --- random draws -------------------------------------------------------------------
    # A call's draws travel as `rng`: None in evaluation mode, else (seed, kernels) with
    # kernels whether the Triton kernels drew them (then only they, or draw_values, can draw
    # them again).  Where a seed comes in alone (an int, or a 0-dim tensor from a custom op
    # under torch.compile) the backend choice of this call decides.

    def new_seed(self):
        """A training-mode call's seed, from torch's default CPU generator: an int, or under
        torch.compile a 0-dim tensor drawn in the graph."""
        high = SEED_BOUND - self.n_draws
        if torch.compiler.is_compiling():
            return torch.randint(0, high, (), device="cpu")
        with torch._C._DisableFuncTorch():      # one seed per call, also under vmap
            return int(torch.randint(0, high, (), device="cpu"))

    def rng(self, seed, x: torch.Tensor):
        """None, or (seed, kernels) for a seed given as an int, a 0-dim tensor or that pair."""
        if seed is None or isinstance(seed, tuple):
            return seed
        return int(seed), _backend.use_triton(x, self.forward_kernel)

    def _on_kernels(self, x, kernel, rng) -> bool:
        """Whether to run the Triton kernels: where the call draws, as its forward did."""
        return rng[1] if rng is not None else _backend.use_triton(x, kernel)

    def _kernel_draws(self, rng):
        """launch's draws argument: None without draws, else (seed, training); seed 0 unused."""
        if not self.n_draws:
            return None
        return (rng[0], True) if rng is not None else (0, False)

    def draw_values(self, x: torch.Tensor, dtype: torch.dtype, rng) -> list:
        """The draws as tensors in dtype: of x's shape in training mode, 0-dim 1/2 in evaluation mode."""
        if not self.n_draws:
            return []
        if rng is None:
            return [torch.full((), 0.5, dtype=dtype, device=x.device)] * self.n_draws
        seed, kernels = rng
        with torch._C._DisableFuncTorch():     # constants: plain tensors also under jvp or vmap
            if kernels:
                return [r.to(dtype) for r in (_launch or _load_launch()).draw_values(seed, self.n_draws, tuple(x.shape), x.device)]
            gen = torch.Generator(device=x.device).manual_seed(seed)
            return [torch.rand(x.shape, generator=gen, dtype=dtype, device=x.device) for _ in range(self.n_draws)]

    def vmap(self, function, info, in_dims, *args):
        """vmap rule of the Functions of an op with draws (the seed is the last argument): one
        call per batch entry, in torch's randomness modes: 'error' (vmap's default) refuses a
        training-mode call, 'same' gives every entry the same draws, 'different' each entry its
        own (seeds drawn from the call's)."""
        seed = args[-1]
        if seed is None or info.randomness == "same":
            return vmap_by_loop(function, info, in_dims, *args)
        if info.randomness == "error":
            raise RuntimeError(
                f"{self.name}: in training mode it draws random numbers, which torch.func.vmap refuses with "
                "randomness='error' (its default); pass randomness='same' or 'different', or training=False")
        return vmap_by_loop(function, info, in_dims, *args, seeds=self.entry_seeds(seed, info.batch_size))

    def entry_seeds(self, seed, batch_size: int) -> list[int]:
        """The seeds of the entries of a call under vmap(randomness='different'), drawn from
        the call's: the call's vmap rule and those of what draws its values again
        (_vmap_drawing_again) draw the same."""
        with torch._C._DisableFuncTorch():
            gen = torch.Generator().manual_seed(int(seed))
            return torch.randint(0, SEED_BOUND - self.n_draws, (batch_size,), generator=gen).tolist()

    # --- compute (the custom ops' implementations) ------------------------------------
    @staticmethod
    def _channels(params):
        return max([p.numel() for p in params]) if params else 1

    def _eager_args(self, inputs, params, constants, channel_dim, rng=None, wide=False):
        """The fallback functions' arguments: inputs, draws, params, constants; in float64
        with `wide`."""
        dt = compute_dtype(inputs[0].dtype, wide)
        ndim = inputs[0].dim()
        xs = [t if t.dtype == dt else t.to(dt) for t in inputs]      # (a .to that does nothing still costs a call)
        ps = [expand_param(p if p.dtype == dt else p.to(dt), ndim, channel_dim) for p in params]
        return [*xs, *self.draw_values(inputs[0], dt, rng), *ps, *constants]

    def kernel_wide(self, dtype: torch.dtype, wide: bool) -> bool:
        """Whether the kernels compute a direction the op computes in float64 (`wide`) in
        float64 for data of dtype: for float32 data always, for 16-bit data only where the
        spec asks for float64 (see float64_16bit)."""
        return wide and (dtype.itemsize > 2 or self.float64_16bit)

    # rng: see "random draws" above (a seed alone is accepted too)
    def _order(self, inputs):
        """memory_order of the inputs, for an op without draws (an op with draws draws them
        in the logical order, which its derivatives draw again)."""
        return None if self.n_draws else memory_order(inputs)

    # found: a Found the fallback's checks of the inputs fill in, for the backward (None: not kept)
    def forward_impl(self, inputs, params, constants, channel_dim, rng=None, found=None):
        if self.plans_forward and _launch is not None and _launch.TUNER.plans:
            form = self._plan_form(inputs)
            if form is not False:
                plan = self._plan(self.forward_kernel, inputs[0], params, tuple(constants), channel_dim, False, form)
                if plan is not None:
                    return plan.forward(inputs, params)
        order = self._order(inputs)
        if order is not None:       # (the views in memory order are contiguous)
            y = self.forward_impl([t.permute(order) for t in inputs], params, constants, order.index(channel_dim), rng, found)
            return permuted_back(y, order)
        x = inputs[0]
        if rng is not None:
            rng = self.rng(rng, x)
        if self._on_kernels(x, self.forward_kernel, rng):
            launch = _launch or _load_launch()
            wide = self.kernel_wide(x.dtype, self.float64_forward)
            y = launch.forward(self.forward_kernel, inputs, params, self.per_channel, constants, channel_dim,
                               self._channels(params), self._kernel_draws(rng), wide)
            form = self._plan_form(inputs) if self.plans_forward else False
            if form is not False:
                self._keep_plan(self.forward_kernel, x, params, constants, channel_dim, False, form, launch.plan_forward,
                                inputs, params, self.per_channel, constants, channel_dim, self._channels(params), wide)
            return y
        if x.is_cpu:
            return self._cpu_forward(inputs, params, constants, channel_dim, rng, found=found)
        args = self._eager_args(inputs, params, constants, channel_dim, rng, self.float64_forward)
        return _output(self.forward_torch(*args), inputs)

    # halves: a gated op's input gradients may be the halves of one buffer (_halves_grads),
    # not where they are a custom op's outputs (torch.compile), which must not alias;
    # found: what the forward's checks found of these inputs (a Found), or None
    def backward_impl(self, grad, inputs, params, constants, channel_dim, needs, rng=None, halves=True, found=None):
        if self.plans_backward and _launch is not None and _launch.TUNER.plans and not _batched(grad):
            form = self._plan_form(inputs)
            if form is not False:
                plan = self._plan(self.backward_kernel, inputs[0], params, tuple(constants), channel_dim,
                                  bool(params) and any(needs[self.n_inputs:]), form)
                if plan is not None:
                    return plan.backward(grad, inputs, params, halves)
        order = self._order(inputs)
        if order is not None:
            moved = [t.permute(order) for t in inputs]
            grads = self.backward_impl(grad.permute(order), moved, params, constants,
                                       order.index(channel_dim), needs, rng, halves, found)
            back = inverse_order(order)
            # (in the inputs' memory order: a product with a grad laid out otherwise - a
            # contiguous grad for channels_last x - takes the grad's strides; the kernels' not)
            fit = [g.contiguous() if not g.is_contiguous() and t.is_contiguous() else g for g, t in zip(grads, moved)]
            return [g.permute(back) for g in fit] + list(grads[self.n_inputs:])
        x = inputs[0]
        if rng is not None:
            rng = self.rng(rng, x)
        if _batched(grad):      # autograd's batched gradients (is_grads_batched): no out= writes
            return self._eager_backward(grad, inputs, params, constants, channel_dim, needs, rng)
        if self._on_kernels(x, self.backward_kernel, rng):
            launch = _launch or _load_launch()
            wide = self.kernel_wide(x.dtype, self.float64_backward)
            grads = launch.backward(self.backward_kernel, grad, inputs, params, self.per_channel, constants, channel_dim,
                                    self._channels(params), needs, self._kernel_draws(rng), wide, halves)
            form = self._plan_form(inputs) if self.plans_backward else False
            if form is not False:
                need_params = bool(params) and any(needs[self.n_inputs:])
                self._keep_plan(self.backward_kernel, x, params, constants, channel_dim, need_params, form,
                                launch.plan_backward, inputs, params, self.per_channel, constants, channel_dim,
                                self._channels(params), need_params, wide)
            return grads
        if x.is_cpu:
            return self._cpu_backward(grad, inputs, params, constants, channel_dim, needs, rng, halves=halves,
                                      finite=found is not None and found.finite)
        return self._eager_backward(grad, inputs, params, constants, channel_dim, needs, rng)

    def _eager_backward(self, grad, inputs, params, constants, channel_dim, needs, rng):
        """The backward as plain torch ops on whole tensors, each result new."""
        x = inputs[0]
        args = self._eager_args(inputs, params, constants, channel_dim, rng, self.float64_backward)
        derivs = self.derivatives_torch(*args)
        g = grad.to(args[0].dtype)
        out = []
        for i, t in enumerate(inputs):
            out.append(_like_input((g * as_tensor(derivs[i], x)).to(t.dtype), t) if needs[i] else torch.empty_like(t))
        for k, p in enumerate(params):
            if needs[self.n_inputs + k]:
                out.append(reduce_to_param(g * derivs[self.n_inputs + k], p, x.shape, channel_dim))
            else:
                out.append(torch.empty_like(p))
        return out

    # --- the CPU fallback: chunked, with a fast variant on a workspace --------------------
    # The inputs (and the draws) are seen as (A, C, B) around the channel dim and evaluated
    # a chunk of about CHUNK_BYTES per temporary at a time, so that every temporary stays in
    # cache.  The fast variant computes a chunk in the buffers of the thread's workspace
    # (actgen.runtime.workspace; no allocation per operation, where each chunk-sized
    # temporary would otherwise be fresh pages from the system every time).  Where the
    # op's block has NaN/inf guards, the fast variant is its guard-free form (float-mask
    # branches) for finite inputs: a chunk whose inputs are all finite (one sum each) runs
    # it, and the guarded functions run otherwise, or where it reports a value that is not
    # finite.  Chunks of 512 KiB per temporary measured best on a 2-vCPU EPYC VM (1 MiB of
    # L2 cache per core).
    CHUNK_BYTES = 1 << 19

    def _chunk(self, dtype, wide: bool, which: int) -> int:
        """Elements per chunk of f (which 0) or the derivatives (1), computing in
        compute_dtype(dtype, wide): CHUNK_BYTES per temporary, fewer where the fast variant's
        buffers would not fit in the workspace's WORKSPACE_BYTES (pau's derivatives)."""
        size = min(self.CHUNK_BYTES, WORKSPACE_BYTES // (self.fast_buffers[which] + self.n_inputs + 2))
        return max(1, size // compute_dtype(dtype, wide).itemsize)

    def _chunks(self, shape, channel_dim, per_channel, n):
        """(A, C, B) and the chunks of about n elements: (index into the (A, C, B) view,
        channel slice or index)."""
        numel = math.prod(shape)
        if per_channel:
            cd = channel_dim % len(shape)
            A, C, B = math.prod(shape[:cd]), shape[cd], math.prod(shape[cd + 1:])
        else:
            A, C, B = 1, 1, numel
        if C * B <= n:
            step = max(1, n // max(C * B, 1))
            return (A, C, B), [((slice(a, min(a + step, A)),), slice(None)) for a in range(0, A, step)]
        if B <= n:
            step = max(1, n // max(B, 1))
            return (A, C, B), [((a, slice(c, min(c + step, C))), slice(c, min(c + step, C))) for a in range(A) for c in range(0, C, step)]
        return (A, C, B), [((a, c, slice(b, min(b + n, B))), c) for a in range(A) for c in range(C) for b in range(0, B, n)]

    def _cpu_setup(self, inputs, params, channel_dim, rng, wide, which):
        x = inputs[0]
        dt = compute_dtype(x.dtype, wide)
        per_channel = any(p.numel() > 1 for p in params)
        n = self._chunk(x.dtype, wide, which)
        rows = rows_of(inputs) if self.n_inputs == 2 and not per_channel else None
        if rows is not None:        # (the halves of one tensor: chunks of whole rows, no copies)
            M, N = rows[0][0].shape
            dims, chunks = self._chunks((M, 1, N), 1, True, n)
            views = [v.view(dims) for v in rows[0]]
        else:
            dims, chunks = self._chunks(tuple(x.shape), channel_dim, per_channel, n)
            views = [t.reshape(dims) for t in inputs]
        rs = [r.reshape(dims) if r.dim() else r for r in self.draw_values(x, dt, rng)]
        ps = [p.to(dt).reshape(-1, 1) if p.numel() > 1 else p.to(dt).reshape(()) for p in params]
        return dt, dims, chunks, views, rs, ps

    def _chunk_args(self, views, rs, ps, constants, index, channels, dt, which):
        """One chunk's inputs (in the compute dtype), the rest of the fallback functions'
        arguments, the fast variant's workspace buffers, and two more (the backward's grad in
        the compute dtype, and a param's gradient terms)."""
        xs = [v[index] for v in views]
        n = self.fast_buffers[which]
        ws = WORKSPACE.buffers(n + self.n_inputs + 2, xs[0].shape, dt)
        xs = [x if x.dtype == dt else ws[n + i].copy_(x) for i, x in enumerate(xs)]
        rest = [r[index] if r.dim() else r for r in rs] + [p[channels] if p.dim() else p for p in ps]
        return xs, rest + list(constants), ws[:n], ws[n + self.n_inputs: n + self.n_inputs + 2]

    @staticmethod
    def _finite(xs, found=None) -> bool:
        """Whether every tensor is finite: one sum each, float16's in float32 (an overflowing
        sum of finite values only counts them out); where they are and found is given (xs:
        the call's whole inputs), noted there."""
        finite = all(math.isfinite(_sum(t).item()) for t in xs)
        if finite and found is not None:
            found.finite = True
        return finite

    def _native_window(self, which: int, dtype: torch.dtype):
        """The inputs of dtype that torch's kernel for f (which 0) or the backward (1) is
        trusted with: an open interval, or None (no kernel, or not for this dtype, or the
        direction is computed in float64)."""
        if (self.backward_native if which else self.forward_native) is None:
            return None
        if self.float64_backward if which else self.float64_forward:
            return None
        if dtype not in self._trusted:
            self._trusted[dtype] = self.native_trusted.get(str(dtype).removeprefix("torch."))
        pair = self._trusted[dtype]
        return None if pair is None else pair[which]

    def _native_for(self, which: int, inputs) -> bool:
        """Whether torch's kernel for f (which 0) or the backward (1) can take inputs like
        these at all: a window for the first's dtype, and every input of that dtype."""
        return (self._native_window(which, inputs[0].dtype) is not None
                and all(t.dtype == inputs[0].dtype for t in inputs))

    def _native_takes(self, which: int, xs, finite: bool = False, found=None) -> bool:
        """Whether torch's kernel takes these inputs (ones _native_for admits), one for all:
        any where native_any_input says so, else where _native_inside says so of them all
        (an empty tensor: yes)."""
        return (self.native_any_input[which] or not xs[0].numel()
                or self._native_inside(which, xs, finite=finite, found=found))

    #: torch's kernel takes a tensor with inputs outside its window where the blocks of
    #: PATCH_BLOCK elements that hold them are at most PATCH_FRACTION of it: the derived code
    #: computes those blocks (and the tail past the last whole block, where that holds one)
    #: alone, gathered, and writes them over the kernel's values.
    PATCH_BLOCK = 256
    PATCH_FRACTION = 1 / 8
    _BLOCK_OFFSETS = torch.arange(PATCH_BLOCK)      # (each patch's indices: a block's start plus these)

    def _native_inside(self, which: int, xs, rows: bool = False, finite: bool = False, found=None):
        """Whether torch's kernel for f (which 0) or the backward (1) is trusted with xs: one
        bool for all (Python numbers, stopping at the first input out), or with rows a bool
        tensor, one per block of their (..., PATCH_BLOCK) views (row-major).  The first input inside the
        dtype's window - finite (one sum), and where an end is finite one pass for the largest
        or the smallest (aminmax for both, no sum; NaN where there is one: not inside; over the
        rows' dim aminmax takes 20 times as long as amin and amax) - and every
        other input finite (one sum each,
        float16's in float32: a bfloat16 or float32 sum that overflows, of values near the
        dtype's largest, only counts them out too).  finite: every input is known to be
        finite (the forward's Found), which takes no sums; found: where xs (the call's whole
        inputs) are all inside, noted there as finite."""
        lo, hi = self._native_window(which, xs[0].dtype)
        x = xs[0]
        if not rows:
            # (an infinite end is open too: torch's kernel is not trusted with +-inf, silu's
            # backward at -inf, s*(1 + x*(1 - s)), is 0*-inf = NaN; a sum finds it)
            if lo == -math.inf and hi == math.inf:
                inside = finite or self._finite(xs)
            elif lo == -math.inf:
                inside = x.amax().item() < hi and (finite or self._finite(xs))
            elif hi == math.inf:
                inside = x.amin().item() > lo and (finite or self._finite(xs))
            else:
                least, most = torch.aminmax(x)      # (one pass for both: the whole tensor's aminmax is the faster)
                inside = least.item() > lo and most.item() < hi and (finite or self._finite(xs[1:]))
            if inside and found is not None:
                found.finite = True
            return inside
        if finite:      # (an end of the window is finite: else the whole call was inside)
            if lo == -math.inf:
                return (x.amax(-1) < hi).reshape(-1)
            inside = x.amin(-1) > lo
            return (inside if hi == math.inf else inside.logical_and_(x.amax(-1) < hi)).reshape(-1)
        if lo == -math.inf or hi == math.inf:
            inside = torch.isfinite(_sum(x, -1))
            if lo != -math.inf:
                inside.logical_and_(x.amin(-1) > lo)
            if hi != math.inf:
                inside.logical_and_(x.amax(-1) < hi)
        else:
            inside = (x.amin(-1) > lo).logical_and_(x.amax(-1) < hi)
        for t in xs[1:]:
            if not self._finite([t]):      # (one sum; per block only where that is not finite)
                inside.logical_and_(torch.isfinite(_sum(t, -1)))
        return inside.reshape(-1)

    def _native_whole(self, which: int, inputs, constants, channel_dim, rng, outs, grad=None, needs=None,
                      finite: bool = False, found=None) -> bool:
        """torch's kernel for f (which 0: into outs[0]) or the backward (1: into outs, None
        where not needed) on the whole of the inputs, where it takes them all; or where the
        blocks of PATCH_BLOCK elements it is not trusted with are at most PATCH_FRACTION of
        the inputs, with the derived code's values for those (and for the tail past the last
        whole block, where it is not trusted with that) written over its own; else False, and
        nothing written.  outs are contiguous, or rows apart (the halves of one buffer).
        finite and found: as _native_inside's."""
        n, size = inputs[0].numel(), self.PATCH_BLOCK
        rows = n // size
        if self._native_takes(which, inputs, finite, found):
            self._native_call(which, inputs, constants, outs, grad)
            return True
        if not rows:
            return False
        lines = rows_of(inputs)
        if lines is not None and lines[0][0].shape[1] % size == 0:
            # rows apart (a gated op's halves): their blocks as views, gathered by row and column
            views = lines[0]
            m, width = views[0].shape
            blocks = [v.view(m, width // size, size) for v in views]
            flat = None
        else:
            flat = [t.reshape(-1) for t in inputs]
            blocks = [t[: rows * size].view(rows, size) for t in flat]
        out_rows = self._native_inside(which, blocks, rows=True, finite=finite).logical_not_().nonzero().squeeze(1)
        if out_rows.numel() * size > self.PATCH_FRACTION * n:
            return False
        tail = (flat is not None and rows * size < n
                and not self._native_inside(which, [t[rows * size:] for t in flat], finite=finite))
        self._native_call(which, inputs, constants, outs, grad)
        if not out_rows.numel() and not tail:
            return True
        offsets = self._BLOCK_OFFSETS if len(self._BLOCK_OFFSETS) == size else torch.arange(size)
        idx = torch.add(offsets, out_rows[:, None], alpha=size).view(-1)
        if tail:
            idx = torch.cat([idx, torch.arange(rows * size, n)])
        if flat is None:
            at = (torch.div(idx, width, rounding_mode="floor"), idx % width)
            sub = [v[at] for v in views]
        else:
            sub = [t.index_select(0, idx) for t in flat]
        values = self._patch_values(which, sub, grad.reshape(-1).index_select(0, idx) if which else None,
                                    constants, needs, finite)
        for out, v in zip(outs, values):
            if out is not None:
                _put_flat(out, idx, v if v.dtype == out.dtype else v.to(out.dtype))
        return True

    def _patch_values(self, which: int, sub, grad, constants, needs, finite: bool = False) -> list:
        """The derived code's f (which 0) or grad times each input's derivative (1; None
        where not needed) on the gathered inputs of a patch over torch's kernel, in the
        compute dtype: the fast variant where they are finite, else the guarded functions
        (_values; the caller copies the values out of the workspace; finite: they are known
        to be).  An op with torch's kernels has no params or draws."""
        dt = compute_dtype(sub[0].dtype)
        xs = [t if t.dtype == dt else t.to(dt) for t in sub]
        values, _ = self._values(which, xs, list(constants), True if finite else None)
        if which == 0:
            return [as_tensor(values, xs[0])]
        g = grad if grad.dtype == dt else grad.to(dt)
        return [torch.mul(g, d) if need else None for d, need in zip(values, needs)]

    def _halves_grads(self, inputs, needs):
        """For a gated op's two inputs that are the halves of one tensor, both needed: their
        gradients' buffers, the halves of one laid out as that tensor (layouts.halves_grads);
        else None."""
        if self.n_inputs != 2 or not (needs[0] and needs[1]):
            return None
        return halves_grads(*inputs)

    @staticmethod
    def _grad_buffers(inputs, needs, halves=None):
        """The input gradients' buffers (None where not needed): halves (_halves_grads') where
        given, else new contiguous ones."""
        if halves is not None:
            return halves
        return [new_contiguous(t) if need else None for t, need in zip(inputs, needs)]

    def _native_call(self, which: int, inputs, constants, outs, grad=None):
        """torch's kernel for f (which 0: into outs[0]) or the backward (1: into outs)."""
        if which == 0:
            self.forward_native(*inputs, *constants, outs[0])
        else:
            self.backward_native(grad, *inputs, *constants, outs)

    def _cpu_backward_whole(self, grad, inputs, params, constants, channel_dim, needs, rng, halves=None, finite=False):
        """The backward in one piece (small tensors): a derivative computed afresh takes grad
        in place; the input gradients into halves (_halves_grads' buffers) where given;
        finite: the inputs are known to be."""
        x = inputs[0]
        args = self._eager_args(inputs, params, constants, channel_dim, rng, self.float64_backward)
        derivs, borrowed = self._values(1, args[: self.n_inputs], args[self.n_inputs:], True if finite else None)
        g = grad if grad.dtype == args[0].dtype else grad.to(args[0].dtype)
        ids = [id(v) for v in derivs]
        taken = {id(a) for a in (*args, *inputs, *params, grad) if isinstance(a, torch.Tensor)}
        taken |= {i for i in ids if ids.count(i) > 1}      # two outputs can be one tensor
        if borrowed:                                        # workspace buffers are not handed out
            taken |= set(ids)

        def times_grad(v):
            if not isinstance(v, torch.Tensor):
                return g if v == 1.0 else g * v
            if id(v) not in taken and v.shape == g.shape and v.dtype == g.dtype and v.is_contiguous():
                return v.mul_(g)
            return g * v

        out = []
        for i, t in enumerate(inputs):
            if halves is not None:
                d = derivs[i]
                out.append(torch.mul(g, d if isinstance(d, torch.Tensor) else float(d), out=halves[i]))
            elif needs[i]:
                v = times_grad(derivs[i])
                out.append(_like_input(v.clone() if v is grad else v if v.dtype == t.dtype else v.to(t.dtype), t))
            else:
                out.append(torch.empty_like(t))
        for k, p in enumerate(params):
            if needs[self.n_inputs + k]:
                out.append(reduce_to_param(times_grad(derivs[self.n_inputs + k]), p, x.shape, channel_dim))
            else:
                out.append(torch.empty_like(p))
        return out

    def _values(self, which: int, xs, rest, all_finite=None, ws=None, found=None):
        """(f (which 0) or the first derivatives (1) on one chunk, whether they are in the
        workspace): the fast variant where it runs (on any input, or on finite ones) and
        returns values, else the guarded function.  ws: its buffers (default: the
        workspace's for xs); found: where xs are the call's whole inputs, _finite's."""
        fast = (self.forward_torch_fast, self.derivatives_torch_fast)[which]
        if fast is not None and (self.fast_any_input[which] or all_finite
                                 or (all_finite is None and self._finite(xs, found))):
            shape = xs[0].shape
            if self.n_draws:        # evaluation mode's 0-dim draws: every value has the chunk's shape
                rest = [r.expand(shape) if k < self.n_draws else r for k, r in enumerate(rest)]
            if ws is None:
                ws = WORKSPACE.buffers(self.fast_buffers[which], shape, xs[0].dtype)
            out = fast(*xs, *rest, ws)
            if out is not None:
                return out, True
        return (self.forward_torch, self.derivatives_torch)[which](*xs, *rest), False

    def _all_finite(self, which: int, views, finite: bool = False, found=None):
        """True where the fast variant runs on finite inputs only and every input is (known
        to be, finite, or found by one sum each for the whole call, noted in found), else
        None (each chunk is checked where it matters)."""
        fast = (self.forward_torch_fast, self.derivatives_torch_fast)[which]
        if fast is None or self.fast_any_input[which] or not (finite or self._finite(views, found)):
            return None
        return True

    def _cpu_forward(self, inputs, params, constants, channel_dim, rng, native=True, found=None):
        """f on the fallback: torch's kernel (where the op has one and native) on the whole
        tensor, or on it with a few blocks the derived code's, or chunk by chunk; else the
        derived code.  found: a Found for what the checks of the whole inputs find."""
        x = inputs[0]
        native = native and self._native_for(0, inputs)
        wide = self.float64_forward
        if native:
            out = new_contiguous(x)
            if self._native_whole(0, inputs, constants, channel_dim, rng, [out], found=found):
                return out
            del out
        if x.numel() <= self._chunk(x.dtype, wide, 0):     # one chunk: the tensors as they are
            args = self._eager_args(inputs, params, constants, channel_dim, rng, wide)
            xs = args[: self.n_inputs]
            out = None              # the fast variant computes its result in the output itself
            if self.forward_torch_fast is not None and x.dtype == xs[0].dtype:
                out = new_contiguous(x)
            y, borrowed = self._values(0, xs, args[self.n_inputs:], None, self._into_output(x.shape, out), found)
            return out if y is out else _output(y, inputs, borrowed)
        dt, dims, chunks, views, rs, ps = self._cpu_setup(inputs, params, channel_dim, rng, wide, 0)
        out = torch.empty(dims, dtype=x.dtype, device=x.device)
        all_finite = None if native else self._all_finite(0, views, found=found)     # (native: each chunk's own check)
        for index, channels in chunks:
            target = out[index]
            if native:              # (some input is outside the window) torch's kernel chunk by chunk
                xs = [v[index] for v in views]
                if self._native_takes(0, xs):
                    self._native_call(0, xs, constants, [target])
                    continue
            xs, rest, ws, _ = self._chunk_args(views, rs, ps, constants, index, channels, dt, 0)
            if target.dtype == dt and ws:
                ws = ws[:-1] + [target]
            y, _ = self._values(0, xs, rest, all_finite, ws)
            if y is not target:
                target.copy_(y) if isinstance(y, torch.Tensor) else target.fill_(y)
        return out.reshape(x.shape)

    def _into_output(self, shape, out):
        """The forward's fast variant's buffers for one chunk of shape, its result's (the last)
        being out where out is given (the output itself: no copy)."""
        if out is None:
            return None
        ws = WORKSPACE.buffers(self.fast_buffers[0], shape, out.dtype)
        return ws[: self.fast_buffers[0] - 1] + [out]

    def _cpu_backward(self, grad, inputs, params, constants, channel_dim, needs, rng, native=True, halves=True,
                      finite=False):
        """The input and param gradients on the fallback, as _cpu_forward computes f;
        finite: the inputs are known to be (the forward's Found), which takes no sums."""
        x = inputs[0]
        native = native and self._native_for(1, inputs) and grad.dtype == x.dtype
        halves = self._halves_grads(inputs, needs) if halves else None      # (allocated once, for any path)
        outs = None
        if native:
            outs = self._grad_buffers(inputs, needs, halves)
            if self._native_whole(1, inputs, constants, channel_dim, rng, outs, grad, needs, finite):
                return [o if o is not None else torch.empty_like(t) for o, t in zip(outs, inputs)]
        if x.numel() <= self._chunk(x.dtype, self.float64_backward, 1):
            return self._cpu_backward_whole(grad, inputs, params, constants, channel_dim, needs, rng, halves, finite)
        dt, dims, chunks, views, rs, ps = self._cpu_setup(inputs, params, channel_dim, rng, self.float64_backward, 1)
        g3 = grad.reshape(dims)
        n_in = self.n_inputs
        if outs is None:        # (else the native attempt's, which it left unwritten)
            outs = self._grad_buffers(inputs, needs[: n_in], halves)
        grads = [o.view(dims) if o is not None else None for o in outs]
        sums = [torch.zeros(p.numel(), dtype=dt, device=x.device) if needs[n_in + k] else None for k, p in enumerate(params)]
        all_finite = None if native else self._all_finite(1, views, finite)
        for index, channels in chunks:
            if native:              # torch's kernel chunk by chunk (no params)
                xs = [v[index] for v in views]
                if self._native_takes(1, xs, finite):
                    self._native_call(1, xs, constants, [gr[index] if gr is not None else None for gr in grads], g3[index])
                    continue
            xs, rest, ws, (g, terms) = self._chunk_args(views, rs, ps, constants, index, channels, dt, 1)
            derivs, _ = self._values(1, xs, rest, all_finite, ws)
            g = g3[index] if grad.dtype == dt else g.copy_(g3[index])
            for i in range(n_in):
                if needs[i]:
                    torch.mul(g, derivs[i], out=grads[i][index])
            for k, acc in enumerate(sums):
                if acc is None:
                    continue
                d = derivs[n_in + k]
                v = g if (not isinstance(d, torch.Tensor) and d == 1.0) else torch.mul(g, d, out=terms)
                if acc.numel() == 1:
                    acc += v.sum()
                elif isinstance(channels, int):      # a run of B within one channel
                    acc[channels] += v.sum()
                elif len(index) == 1:                # rows of (A, C, B)
                    acc += v.sum((0, 2))
                else:                                # channels of one row: (c, B)
                    acc[channels] += v.sum(1)
        out = [gr.reshape(t.shape) if gr is not None else torch.empty_like(t) for gr, t in zip(grads, inputs)]
        out += [acc.to(p.dtype) if acc is not None else torch.empty_like(p) for acc, p in zip(sums, params)]
        return out

    # --- autograd (what the generated Function classes call) --------------------------
    def _split(self, args):
        """A Function's arguments (*inputs, *params, *constants, channel_dim[, seed]) ->
        (tensors, constants, channel_dim, seed)."""
        n = self.n_tensors
        if self.n_draws:
            return args[:n], tuple(args[n:-2]), args[-2], args[-1]
        return args[:n], tuple(args[n:-1]), args[-1], None

    def forward(self, *args):
        tensors, constants, channel_dim, seed = self._split(args)
        return self.run_forward(list(tensors[: self.n_inputs]), list(tensors[self.n_inputs:]), list(constants), channel_dim, seed)

    # Under torch.compile the compute is the registered custom op (opaque to the tracer,
    # with a fake implementation; the seed a 0-dim tensor); in eager use the implementation
    # is called directly, which skips the dispatcher's per-call work and torch's first-call imports.
    def run_forward(self, inputs, params, constants, channel_dim, rng=None):
        if torch.compiler.is_compiling():
            return self.fwd_op(inputs, params, constants, channel_dim, _seed_tensor(rng))
        return self.forward_impl(inputs, params, constants, channel_dim, rng)

    def run_backward(self, grad, inputs, params, constants, channel_dim, needs, rng=None, found=None):
        if torch.compiler.is_compiling():
            return self.bwd_op(grad, inputs, params, constants, channel_dim, needs, _seed_tensor(rng))
        return self.backward_impl(grad, inputs, params, constants, channel_dim, needs, rng, found=found)

    def setup_context(self, ctx, args, jvp=False):
        tensors, constants, channel_dim, seed = self._split(args)
        ctx.save_for_backward(*tensors)
        if jvp:
            ctx.save_for_forward(*tensors)
        ctx.constants = constants
        ctx.channel_dim = channel_dim
        # the seed alone (an int), not a tensor: under torch.compile it stays the graph's tensor
        ctx.rng = seed if torch.compiler.is_compiling() else self.rng(seed, tensors[0])

    def backward(self, ctx, grad):
        grads = self.input_grads(ctx, grad, ctx.needs_input_grad[: self.n_tensors])
        return (*grads, *([None] * (len(ctx.constants) + 1 + bool(self.n_draws))))

    def input_grads(self, ctx, grad, needs, tensors=None):
        """Gradients of the inputs and params (None where not needed), from the saved tensors
        (tensors: those the caller unpacked; a checkpoint's saved tensors unpack once)."""
        if tensors is None:
            tensors = ctx.saved_tensors
        # (under vmap a call's draws are each entry's: _Backward's vmap rule draws them again)
        if torch.is_grad_enabled() or (ctx.rng is not None and _draws_per_entry()):
            grads = _Backward.apply(self, ctx.constants, ctx.channel_dim, ctx.rng, grad, *tensors)
        else:
            inputs = list(tensors[: self.n_inputs])
            found = getattr(ctx, "found", None)     # (_EagerFunction's: the forward's checks)
            grads = self.run_backward(grad, inputs, list(tensors[self.n_inputs:]), list(ctx.constants),
                                      ctx.channel_dim, list(needs), ctx.rng,
                                      found if found is not None and found.holds(inputs) else None)
        return [g if need else None for g, need in zip(grads, needs)]

    def jvp(self, ctx, *tangents):
        tensors, ts = ctx.saved_tensors, tangents[: self.n_tensors]
        # (under vmap a call's draws are each entry's: _Tangent's vmap rule draws them again)
        if ctx.rng is not None and _draws_per_entry():
            return _Tangent.apply(self, ctx.constants, ctx.channel_dim, ctx.rng, *tensors, *ts)
        return self.tangent(tensors, ts, ctx.constants, ctx.channel_dim, ctx.rng)

    def tangent(self, tensors, ts, constants, channel_dim, rng=None):
        """f's forward-mode derivative along the tangents ts of the inputs and params (None:
        0), in plain torch."""
        x = tensors[0]
        args = self._eager_args(tensors[: self.n_inputs], tensors[self.n_inputs:], constants, channel_dim,
                                self.rng(rng, x), self.float64_backward)
        derivs = self.derivatives_torch(*args)
        out = torch.zeros(x.shape, dtype=args[0].dtype, device=x.device)
        for d, t in zip(derivs, self._compute_tangents(ts, out.dtype, x.dim(), channel_dim)):
            if t is not None:
                out = out + d * t
        return out.to(x.dtype)

    def tangent_grads(self, grad, tensors, ts, constants, channel_dim, rng=None):
        """The gradients of `tangent` (times grad) w.r.t. the inputs and params, then w.r.t.
        their tangents (None where a tangent is None), in plain torch."""
        first, contracted = self._second_order(grad, tensors, ts, constants, channel_dim, rng)
        g = grad.to(contracted[0].dtype)
        by_tangent = self._per_tensor([g * d for d in first], tensors, channel_dim)
        return self._per_tensor(contracted, tensors, channel_dim) + [
            None if t is None else v for t, v in zip(ts, by_tangent)]

    def _second_order(self, grad, tensors, ws, constants, channel_dim, rng):
        """(the first derivatives, and for every v grad * sum over u of w_u * d2f/du dv) for
        ws (one per input and param, None: 0) - what the backward's own derivatives need
        (double backward, its jvp) - by second_order, or where the call's draws are each vmap
        entry's, by _SecondOrder (whose vmap rule draws them again)."""
        if rng is not None and _draws_per_entry():
            values = _SecondOrder.apply(self, constants, channel_dim, rng, grad, *tensors, *ws)
            return list(values[: self.n_tensors]), list(values[self.n_tensors:])
        return self.second_order(grad, tensors, ws, constants, channel_dim, rng)

    def second_order(self, grad, tensors, ws, constants, channel_dim, rng=None):
        """_second_order's values, in the compute dtype (a first derivative may be a number)."""
        n_in, n = self.n_inputs, self.n_tensors
        x = tensors[0]
        args = self._eager_args(tensors[:n_in], tensors[n_in:], constants, channel_dim, self.rng(rng, x),
                                self.float64_backward)
        dt = args[0].dtype
        first = self.derivatives_torch(*args)
        second = iter(self.second_derivatives_torch(*args))
        H = [[None] * n for _ in range(n)]
        for i in range(n):
            for j in range(i, n):
                H[i][j] = H[j][i] = next(second)
        ws = self._compute_tangents(ws, dt, x.dim(), channel_dim)
        g = grad.to(dt)
        zero = torch.zeros((), dtype=dt, device=x.device)
        return first, [g * sum((ws[u] * H[u][j] for u in range(n) if ws[u] is not None), zero) for j in range(n)]

    def _compute_tangents(self, ws, dtype, dims, channel_dim):
        """ws (one per input and param, None: 0) in the compute dtype, params' expanded
        against the input."""
        return [None if t is None else (t.to(dtype) if i < self.n_inputs else expand_param(t.to(dtype), dims, channel_dim))
                for i, t in enumerate(ws)]

    def _per_tensor(self, vs, tensors, channel_dim):
        """Values, one per input (its shape and dtype) and param (summed to it)."""
        x = tensors[0]
        return [as_tensor(v, x).to(t.dtype) if j < self.n_inputs else reduce_to_param(v, t, x.shape, channel_dim)
                for j, (v, t) in enumerate(zip(vs, tensors))]

    def double_backward(self, grad, tensors, ggs, constants, channel_dim, rng=None):
        """Gradients of (grad * df/dv for every v) w.r.t. grad and every v, in plain torch."""
        first, contracted = self._second_order(grad, tensors, ggs, constants, channel_dim, rng)
        dt = contracted[0].dtype
        gg = self._compute_tangents(ggs, dt, tensors[0].dim(), channel_dim)
        grad_g = sum((gg[u] * first[u] for u in range(self.n_tensors) if gg[u] is not None), torch.zeros((), dtype=dt, device=grad.device))
        return [as_tensor(grad_g, tensors[0]).to(grad.dtype)] + self._per_tensor(contracted, tensors, channel_dim)

    def backward_jvp(self, grad, tensors, t_grad, ts, constants, channel_dim, rng=None):
        """The forward-mode derivative of (grad * df/dv for every v, params' summed) along the
        tangents t_grad of grad and ts of every v (None: 0), in plain torch."""
        first, contracted = self._second_order(grad, tensors, ts, constants, channel_dim, rng)
        if t_grad is not None:
            tg = t_grad.to(contracted[0].dtype)
            contracted = [c + tg * d for c, d in zip(contracted, first)]
        return self._per_tensor(contracted, tensors, channel_dim)


_IS_BATCHED = tuple(f for f in (getattr(getattr(torch._C, "_functorch", None), name, None)
                                 for name in ("is_legacy_batchedtensor", "is_batchedtensor")) if f is not None)


def _batched(t: torch.Tensor) -> bool:
    """Whether t is a batched tensor of a vmap over a backward (autograd.grad's
    is_grads_batched, gradcheck's batched check, jacobian(vectorize=True)): no out= op takes
    one."""
    for is_batched in _IS_BATCHED:
        if is_batched(t):
            return True
    return False


def _draws_per_entry() -> bool:
    """Whether a vmap level that gives each entry its own draws (randomness 'different') is
    active: then whatever draws a call's values again - its backward, jvp and their
    derivatives - runs through a Function with a vmap rule (_vmap_drawing_again)."""
    if not torch._C._are_functorch_transforms_active():
        return False
    try:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
        levels = retrieve_all_functorch_interpreters()
    except (ImportError, AttributeError):       # (another torch: take the safe route)
        return True
    return any(getattr(i, "randomness", lambda: None)() == "different" for i in levels)


def no_forward_ad() -> bool:
    """Whether no forward-mode AD level is active (under one, tensors may carry tangents)."""
    return getattr(torch.autograd.forward_ad, "_current_level", 0) < 0


class _EagerFunction(torch.autograd.Function):
    """The Function eager calls go through: apply(op, channel_dim, seed, plan, *inputs, *params, *constants).

    Same semantics as the generated Function classes (which torch.func transforms and
    torch.compile use), in the single-forward style whose apply has no per-call signature
    binding.  plan: None, or the launch plan of a call _planned_call checked (no draws, no
    forward-mode AD), which launches the forward and leads to the backward's plan."""

    @staticmethod
    def forward(ctx, op, channel_dim, seed, plan, *args):
        n = op.n_tensors
        tensors, constants = args[:n], args[n:]
        ctx.op, ctx.constants, ctx.channel_dim, ctx.plan = op, constants, channel_dim, plan
        ctx.save_for_backward(*tensors)
        if plan is not None:
            ctx.rng = ctx.found = None
            return plan.forward(tensors[: op.n_inputs], tensors[op.n_inputs:])
        found = ctx.found = Found(tensors[: op.n_inputs]) if tensors[0].is_cpu else None
        rng = ctx.rng = None if seed is None else op.rng(seed, tensors[0])
        if not no_forward_ad():
            ctx.save_for_forward(*tensors)
        if torch._C._get_tracing_state() is not None:
            # torch.jit.trace: the custom op, a node of the trace run below the tracer (where
            # sizes are ints, and the checks of the data no constants of the trace)
            return op.fwd_op(list(tensors[: op.n_inputs]), list(tensors[op.n_inputs:]), list(constants), channel_dim,
                             _seed_tensor(rng))
        return op.forward_impl(list(tensors[: op.n_inputs]), list(tensors[op.n_inputs:]), list(constants), channel_dim,
                               rng, found)

    @staticmethod
    def backward(ctx, grad):
        op = ctx.op
        needs = ctx.needs_input_grad[4: 4 + op.n_tensors]
        grads = None
        tensors = ctx.saved_tensors     # (once: under non-reentrant checkpointing a second unpack is an error)
        if ctx.plan is not None and not torch.is_grad_enabled():      # (else a differentiable backward)
            grads = op.planned_grads(ctx.plan, grad, tensors, ctx.constants, ctx.channel_dim, needs)
        if grads is None:
            grads = op.input_grads(ctx, grad, needs, tensors)
        return (None, None, None, None, *grads, *([None] * len(ctx.constants)))

    @staticmethod
    def jvp(ctx, *tangents):
        return ctx.op.jvp(ctx, *tangents[4:])


def _in_vmap() -> bool:
    """Whether the innermost torch.func transform is a vmap (what torch.compile traces)."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

    interpreter = retrieve_current_functorch_interpreter()
    return interpreter is not None and interpreter.key() == TransformType.Vmap


def _outside_the_graph(fn, *args):
    """fn(*args) run eagerly where torch.compile traces its caller (a graph break)."""
    return torch._dynamo.disable(fn, recursive=True)(*args)


def _raw_apply():
    """_EagerFunction's apply without torch.autograd.Function.apply's Python around it (which,
    for a Function without setup_context and no functorch transform active, unwraps dead
    functorch wrappers and calls this), or None where this torch lacks either part."""
    try:
        from torch._C._functorch import unwrap_if_dead
        return super(torch.autograd.Function, _EagerFunction).apply, unwrap_if_dead
    except (ImportError, AttributeError):
        return None


_RAW_APPLY = _raw_apply()


def _planned_apply(op, channel_dim, plan, inputs, params, constants):
    """_EagerFunction.apply(op, channel_dim, None, plan, *inputs, *params, *constants) for a
    call _planned_call checked: no functorch transform active (and every tensor plain)."""
    if _RAW_APPLY is None:
        return _EagerFunction.apply(op, channel_dim, None, plan, *inputs, *params, *constants)
    apply, unwrap = _RAW_APPLY
    return apply(op, channel_dim, None, plan, *[unwrap(t) for t in inputs], *[unwrap(p) for p in params], *constants)


class _Backward(torch.autograd.Function):
    """The backward op as a differentiable function (used when create_graph=True)."""

    @staticmethod
    def forward(op, constants, channel_dim, rng, grad, *tensors):
        n_in = op.n_inputs
        grads = op.run_backward(grad, list(tensors[:n_in]), list(tensors[n_in:]), list(constants), channel_dim,
                                [True] * len(tensors), rng)
        # (a view - the kernels' param gradients, rows of one tensor - would need its tangent
        # as a view alike under forward-mode AD)
        return tuple(g.clone() if g._base is not None else g for g in grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        op, constants, channel_dim, rng, grad, *tensors = inputs
        ctx.op, ctx.constants, ctx.channel_dim, ctx.rng = op, constants, channel_dim, rng
        ctx.save_for_backward(grad, *tensors)
        ctx.save_for_forward(grad, *tensors)
        # a gradient nothing flows back into comes as None, not zeros: 0 times an infinite
        # second derivative would be NaN in the ones asked for
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *ggs):
        grad, *tensors = ctx.saved_tensors
        return (None, None, None, None, *ctx.op.double_backward(grad, tensors, ggs, ctx.constants, ctx.channel_dim, ctx.rng))

    @staticmethod
    def jvp(ctx, *tangents):
        """Forward over reverse (torch.func.hessian, jacfwd of jacrev)."""
        grad, *tensors = ctx.saved_tensors
        t_grad, *ts = tangents[4:]
        return tuple(ctx.op.backward_jvp(grad, tensors, t_grad, ts, ctx.constants, ctx.channel_dim, ctx.rng))

    @staticmethod
    def vmap(info, in_dims, *args):
        return _vmap_drawing_again(_Backward, info, in_dims, args, in_dims[5:])


class _Tangent(torch.autograd.Function):
    """An op's forward-mode derivative (its jvp) as a function, where the call draws under
    torch.func's transforms: apply(op, constants, channel_dim, rng, *tensors, *tangents)."""

    @staticmethod
    def forward(op, constants, channel_dim, rng, *rest):
        n = op.n_tensors
        return op.tangent(rest[:n], rest[n:], constants, channel_dim, rng)

    @staticmethod
    def setup_context(ctx, inputs, output):
        op, constants, channel_dim, rng, *rest = inputs
        ctx.op, ctx.constants, ctx.channel_dim, ctx.rng = op, constants, channel_dim, rng
        ctx.has_tangent = [t is not None for t in rest[op.n_tensors:]]
        ctx.save_for_backward(*rest[: op.n_tensors], *(t for t in rest[op.n_tensors:] if t is not None))

    @staticmethod
    def backward(ctx, grad):
        op, saved = ctx.op, iter(ctx.saved_tensors)
        tensors = [next(saved) for _ in range(op.n_tensors)]
        ts = [next(saved) if has else None for has in ctx.has_tangent]
        grads = op.tangent_grads(grad, tensors, ts, ctx.constants, ctx.channel_dim, ctx.rng)
        return (None, None, None, None, *grads)

    @staticmethod
    def vmap(info, in_dims, *args):
        return _vmap_drawing_again(_Tangent, info, in_dims, args, in_dims[4: 4 + args[0].n_tensors])


class _SecondOrder(torch.autograd.Function):
    """Activation.second_order as a function, where the call's draws are each vmap entry's:
    apply(op, constants, channel_dim, rng, grad, *tensors, *ws); its values are not
    differentiated further."""

    @staticmethod
    def forward(op, constants, channel_dim, rng, grad, *rest):
        n = op.n_tensors
        first, contracted = op.second_order(grad, rest[:n], rest[n:], constants, channel_dim, rng)
        return (*(as_tensor(v, contracted[0]) for v in first), *contracted)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name = inputs[0].name

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"{ctx.name}: derivatives past the second of a training-mode call that draws random "
                           "numbers under torch.func.vmap(randomness='different') are not supported")

    @staticmethod
    def vmap(info, in_dims, *args):
        return _vmap_drawing_again(_SecondOrder, info, in_dims, args, in_dims[5: 5 + args[0].n_tensors])


def _vmap_drawing_again(function, info, in_dims, args, tensor_dims):
    """vmap rule of a Function computing from an op's call, apply(op, constants, channel_dim,
    rng, ...): one call per entry; where the call drew each entry's own values (randomness
    'different', and the call's tensors batched at this level, tensor_dims: not a vmap over
    the tangents or gradients of one call), with that entry's seed, as the call's vmap rule
    (Activation.vmap) drew it."""
    op, rng = args[0], args[3]
    if rng is None or info.randomness != "different" or all(d is None for d in tensor_dims):
        return vmap_by_loop(function, info, in_dims, *args)
    seed, kernels = op.rng(rng, next(a for a in args[4:] if isinstance(a, torch.Tensor)))
    rngs = [(s, kernels) for s in op.entry_seeds(seed, info.batch_size)]
    return vmap_by_loop(function, info, in_dims, *args, seeds=rngs, seed_at=3)


def vmap_by_loop(function, info, in_dims, *args, seeds=None, seed_at=-1):
    """vmap rule for Functions whose compute is an opaque op: one call per batch entry (with
    seeds, entry b gets seeds[b] for its argument at seed_at, the seed)."""
    if not info.batch_size:         # no entries: one of zeros for the shapes, none kept
        entry = [a.sum(d) if isinstance(a, torch.Tensor) and d is not None else a      # (zeros, one entry's shape)
                 for a, d in zip(args, in_dims)]
        if seeds is not None:
            entry[seed_at] = None
        out = function.apply(*entry)
        if isinstance(out, tuple):
            return tuple(o.new_empty((0, *o.shape)) for o in out), tuple(0 for _ in out)
        return out.new_empty((0, *out.shape)), 0
    results = []
    for b in range(info.batch_size):
        sliced = [a.select(d, b) if isinstance(a, torch.Tensor) and d is not None else a for a, d in zip(args, in_dims)]
        if seeds is not None:
            sliced[seed_at] = seeds[b]
        results.append(function.apply(*sliced))
    if isinstance(results[0], tuple):
        return tuple(torch.stack(r) for r in zip(*results)), tuple(0 for _ in results[0])
    return torch.stack(results), 0


def _seed_tensor(rng):
    """A custom op's seed argument: None, or the seed as a 0-dim tensor."""
    if rng is None or isinstance(rng, torch.Tensor):
        return rng
    return torch.tensor(rng[0] if isinstance(rng, tuple) else rng)


def _unaliased(outs):
    """A custom op's outputs, none sharing memory with another (the kernels' param gradients
    are views of one buffer of partial sums' totals, which a custom op may not return): a
    later one that does is copied (a param's gradient: a few numbers)."""
    seen, result = set(), []
    for t in outs:
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        result.append(t)
    return result


def _register(opname: str, act: Activation):
    """Register (once per process) the forward and backward custom ops of an activation.  Their
    seed argument: None, or for an op with draws in training mode the call's seed (0-dim tensor)."""
    if opname in _REGISTERED:
        return _REGISTERED[opname]
    fwd = torch.library.custom_op(
        f"actgen::{opname}_forward",
        lambda inputs, params, constants, channel_dim, seed: act.forward_impl(inputs, params, constants, channel_dim, seed),
        mutates_args=(),
        schema="(Tensor[] inputs, Tensor[] params, float[] constants, int channel_dim, Tensor? seed) -> Tensor",
    )
    bwd = torch.library.custom_op(
        f"actgen::{opname}_backward",
        lambda grad, inputs, params, constants, channel_dim, needs, seed: _unaliased(act.backward_impl(
            grad, inputs, params, constants, channel_dim, needs, seed, halves=False)),
        mutates_args=(),
        schema="(Tensor grad, Tensor[] inputs, Tensor[] params, float[] constants, int channel_dim, bool[] needs, "
               "Tensor? seed) -> Tensor[]",
    )

    def empty(t, order):
        if order is None:
            return torch.empty(t.shape, dtype=t.dtype, device=t.device)
        return torch.empty_permuted(t.shape, order, dtype=t.dtype, device=t.device)

    @fwd.register_fake
    def _(inputs, params, constants, channel_dim, seed):
        return empty(inputs[0], act._order(inputs))

    @bwd.register_fake
    def _(grad, inputs, params, constants, channel_dim, needs, seed):
        order = act._order(inputs)
        return [empty(t, order) for t in inputs] + [empty(p, None) for p in params]

    def setup_context(ctx, inputs, output):
        tensors, params, constants, channel_dim, seed = inputs
        ctx.save_for_backward(*tensors, *params)
        ctx.n_inputs, ctx.constants, ctx.channel_dim, ctx.seed = len(tensors), constants, channel_dim, seed

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        n = ctx.n_inputs
        grads = bwd(grad, list(saved[:n]), list(saved[n:]), ctx.constants, ctx.channel_dim, [True] * len(saved), ctx.seed)
        # (the float[] constants take one None, or the empty list they are: torch's check of
        # the returned structure)
        return list(grads[:n]), list(grads[n:]), None if ctx.constants else [], None, None

    # (the forward op differentiable on its own, where a graph holds it without the Function
    # around it: torch.export's programs, torch.compile of a vmap)
    torch.library.register_autograd(fwd, backward, setup_context=setup_context)
    torch.library.register_vmap(fwd, _vmap_forward(fwd))
    torch.library.register_vmap(bwd, _vmap_backward(bwd, act.n_inputs))
    _REGISTERED[opname] = (fwd, bwd)
    return fwd, bwd


# --- vmap rules of the custom ops -------------------------------------------------------
# Elementwise in the inputs: with unbatched params, a batch dim is one more leading dim of
# every input (the channel dim moves by one) and a single call does the whole batch.
# Batched params (or param gradients, which are reductions) fall back to one call per entry.


def _front(t: torch.Tensor, d, size: int) -> torch.Tensor:
    return t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(size, *t.shape)


def _select(arg, d, b):
    if isinstance(arg, (list, tuple)):
        dims = d if isinstance(d, (list, tuple)) else [d] * len(arg)
        return [_select(a, dd, b) for a, dd in zip(arg, dims)]
    return arg.select(d, b) if isinstance(arg, torch.Tensor) and d is not None else arg


def _dims(d, n):
    return list(d) if isinstance(d, (list, tuple)) else [d] * n


def _loop(op, info, in_dims, args):
    return [op(*[_select(a, d, b) for a, d in zip(args, in_dims)]) for b in range(info.batch_size)]


def _vmap_forward(op):
    def rule(info, in_dims, inputs, params, constants, channel_dim, seed):
        in_d, p_d = _dims(in_dims[0], len(inputs)), _dims(in_dims[1], len(params))
        if all(d is None for d in p_d):
            xs = [_front(t, d, info.batch_size) for t, d in zip(inputs, in_d)]
            return op(xs, params, constants, channel_dim + 1, seed), 0
        outs = _loop(op, info, in_dims, (inputs, params, constants, channel_dim, seed))
        return torch.stack(outs), 0

    return rule


def _vmap_backward(op, n_inputs):
    def rule(info, in_dims, grad, inputs, params, constants, channel_dim, needs, seed):
        in_d, p_d = _dims(in_dims[1], len(inputs)), _dims(in_dims[2], len(params))
        if all(d is None for d in p_d) and not any(needs[n_inputs:]):
            g = _front(grad, in_dims[0], info.batch_size)
            xs = [_front(t, d, info.batch_size) for t, d in zip(inputs, in_d)]
            out = op(g, xs, params, constants, channel_dim + 1, needs, seed)
            n = len(inputs)
            return list(out[:n]) + list(out[n:]), [0] * n + [None] * len(params)
        outs = _loop(op, info, in_dims, (grad, inputs, params, constants, channel_dim, needs, seed))
        return [torch.stack(r) for r in zip(*outs)], [0] * len(outs[0])

    return rule
