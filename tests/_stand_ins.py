"""Stand-ins for Triton's compiled kernels and JIT, and a launcher bound to a stand-in device,
for the launcher's tests (there is no GPU here to launch on)."""
from types import SimpleNamespace

from actgen.runtime import variants


class Compiled:
    """Stands in for a compiled variant: records the launcher's calls."""

    def __init__(self, fail=False):
        self.function, self.packed_metadata, self.calls, self.fail = object(), object(), [], fail

    def launch_metadata(self, grid, stream, *values):
        return ("meta", grid, stream, values)

    def run(self, *a):
        if self.fail:
            raise TypeError("launcher takes other arguments")
        self.calls.append(a)


class Kernel:
    """Stands in for a JIT kernel: kernel[grid](...) compiles (a new variant, kept in
    `compiled`) and launches."""

    arg_names = ["x_ptr", "out_ptr", "n", "BLOCK", "FAST"]
    params = [SimpleNamespace(num=i, do_not_specialize=False) for i in range(5)]
    __name__ = "stand_in"

    def __init__(self, fail=False):
        self.jit_calls, self.compiled, self.fail = [], [], fail

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.jit_calls.append((grid, args, kw))
            self.compiled.append(Compiled(self.fail))
            return self.compiled[-1]
        return launch


def launcher(store=None, static=None):
    """A Launcher bound to device 0 and its stream "stream0", with launch hooks "enter" and "exit"."""
    out = variants.Launcher(enabled=True, store=store, static=static)
    hooks = SimpleNamespace(launch_enter_hook="enter", launch_exit_hook="exit")
    out._device, out._stream, out._hooks = (lambda: 0), (lambda device: f"stream{device}"), hooks
    out._target = lambda: "target0"
    return out
