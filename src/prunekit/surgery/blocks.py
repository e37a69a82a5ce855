"""Depth pruning: residual blocks found in the traced graph, replaced by what is left when their branch is 0.

A *residual block* is any module whose output is its own input plus a branch computed inside it, optionally
followed by one element-wise activation: ``y = act(x + branch(x))`` or ``y = x + branch(x)``, whatever its
class or child names (the branch may end with a layer-scale or a drop-path; several sums onto ``x``, as in a
transformer layer, count as one branch). It is found by running the model once (on a structural ``meta``
copy when possible: no arithmetic, no user hooks) and reading the autograd graph of each module's output.
A block whose shortcut is a projection / downsampling is not removable, and the reason is given.

:func:`remove_blocks` replaces each block by ``act`` (or an identity) and verifies the result against the
network whose branch outputs are zeroed, on the example inputs (removal equals masking, as for channels).
:func:`remove_branches` removes one operand of a sum with several (:attr:`BlockInfo.branches`: a transformer
layer's attention or MLP branch) the same way.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import set_submodule
from prunekit.surgery import history
from prunekit.surgery.graph import forward_fn, meta_twin, preserve_mode, to_meta
from prunekit.surgery.structured import SurgeryReport, compare_outputs, count_params, recorded_shapes, run_model

# element-wise activations allowed after the sum, by autograd node: a fresh module computing the same
_POST_ACTS = {
    "ReluBackward0": lambda n: nn.ReLU(),
    "SiluBackward0": lambda n: nn.SiLU(),
    "SigmoidBackward0": lambda n: nn.Sigmoid(),
    "TanhBackward0": lambda n: nn.Tanh(),
    "HardswishBackward0": lambda n: nn.Hardswish(),
    "GeluBackward0": lambda n: nn.GELU(approximate=getattr(n, "_saved_approximate", "none")),
    "HardtanhBackward0": lambda n: nn.Hardtanh(float(n._saved_min_val), float(n._saved_max_val)),
    "LeakyReluBackward0": lambda n: nn.LeakyReLU(float(n._saved_negative_slope)),
    "EluBackward0": lambda n: nn.ELU(float(n._saved_alpha)),
}
# ops a branch output may pass through after its last module and still be 0 when that module outputs 0
_ZERO_KEEPING = ("MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1", "CloneBackward0",
                 "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "PermuteBackward0",
                 "TransposeBackward0", "ExpandBackward0", "SqueezeBackward0", "UnsqueezeBackward0",
                 "ContiguousBackward0", "NativeDropoutBackward0")


@dataclass
class Branch:
    """One operand of a block's sum (a transformer layer has two: attention, then MLP): what carries it."""

    layer: str
    """The innermost module producing it (through zero-keeping ops: dropout, layer-scale, reshape), "" if none."""
    producer: str
    """The outermost module inside the block whose every output feeds only this branch and produces it."""
    modules: tuple[str, ...]
    """Every outermost module inside the block feeding only this branch (``producer`` among them)."""
    io: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = field(default_factory=dict)
    """For each of ``modules``: input shape, output shape, tuple length of its output (0: a tensor)."""


@dataclass
class BlockInfo:
    """What the graph says about one module with a sum at its output."""

    name: str
    removable: bool
    reason: str = ""
    """Why it cannot be removed ("" when it can)."""
    branch_ends: list[str] = field(default_factory=list)
    """Submodules whose outputs are the branch's contributions to the sum (zeroed to verify a removal)."""
    act: nn.Module | None = None
    """The element-wise activation after the sum (None: nothing, the block becomes an identity)."""
    extra_inputs: bool = False
    """Called with more than its input (masks, flags): the replacement must accept and ignore them."""
    as_tuple: int = 0
    """Returns a tuple of this length (its output first): so must the replacement."""
    node: int = 0
    """Identifies the sum and the input: a wrapper sharing both with a block is the same block."""
    branches: list[Branch] = field(default_factory=list)
    """Each operand of the sum, for removing one branch alone (:func:`remove_branches`); empty when unknown."""


class Skip(nn.Module):
    """What is left of a removed residual block: ``act(x)`` (or ``x``); extra arguments are ignored. With
    ``as_tuple=n`` it returns ``(act(x), None, ...)`` of length n, as blocks returning their output with
    optional extras (HF Swin: attention weights) do; the removal check shows the caller copes with it."""

    def __init__(self, act: nn.Module | None = None, as_tuple: int = 0) -> None:
        super().__init__()
        self.act = act if act is not None else nn.Identity()
        self.as_tuple = as_tuple

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        y = self.act(x)
        return (y, *([None] * (self.as_tuple - 1))) if self.as_tuple else y


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v
    return None


def _seq(node: Any) -> int:
    return int(node._sequence_nr()) if node is not None and hasattr(node, "_sequence_nr") else -1


def _fresh_seq() -> int:
    """The autograd sequence number a node created now gets (every later node has a larger one)."""
    return _seq((torch.zeros(1, requires_grad=True) * 1).grad_fn)


def _fresh_act(act: nn.Module) -> nn.Module:
    """A copy of the block's activation that never works in place (the block input may be saved for backward)."""
    new: Any = copy.deepcopy(act)
    if hasattr(new, "inplace"):
        cast(Any, new).inplace = False  # a plain flag; Module's stubs type unknown attributes Tensor | Module
    return new


class _Tracer:
    """Forward hooks on every module recording, for each, whether its output is ``act(x + branch)``."""

    def __init__(self, model: nn.Module, real: nn.Module) -> None:
        self.names = {m: n for n, m in model.named_modules()}
        self.real = dict(real.named_modules())
        self.start: dict[str, int] = {}
        self.made_by: dict[int, str] = {}  # id(autograd node) -> outermost module whose output it is
        self.keep: list[Any] = []  # the nodes, alive while we look them up by id
        self.calls: dict[str, int] = {}
        self.infos: dict[str, BlockInfo] = {}
        self.first_by: dict[int, str] = {}  # id(autograd node) -> innermost module whose output it is
        self.outs_of: dict[str, list[int]] = {}  # module -> ids of its output nodes (every call)
        self.io: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {}  # first call: in, out shape, tuple

    def pre(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = self.names[mod]
        self.calls[name] = self.calls.get(name, 0) + 1
        self.start.setdefault(name, _fresh_seq())

    def post(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        name = self.names[mod]
        y = out if isinstance(out, torch.Tensor) else None
        if name and self.calls.get(name) == 1:
            x0, y0 = _first_tensor(args, kwargs), out[0] if isinstance(out, tuple) and out else out
            if isinstance(x0, torch.Tensor) and isinstance(y0, torch.Tensor):
                self.io[name] = (tuple(x0.shape), tuple(y0.shape), len(out) if isinstance(out, tuple) else 0)
            info = self._look(name, args, kwargs, out)
            if info is not None:
                self.infos[name] = info
        outs = [y] if y is not None else [t for t in out if isinstance(t, torch.Tensor)] \
            if isinstance(out, tuple | list) else []
        for t in outs:
            if t.grad_fn is not None:
                self.made_by[id(t.grad_fn)] = name
                self.first_by.setdefault(id(t.grad_fn), name)
                if not (isinstance(mod, nn.MultiheadAttention) and t is not outs[0]):  # its attention weights
                    self.outs_of.setdefault(name, []).append(id(t.grad_fn))  # (need_weights) may go unread
                self.keep.append(t.grad_fn)

    def _look(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> BlockInfo | None:
        x = _first_tensor(args, kwargs)
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            y, tuple_out = out[0], True
        elif isinstance(out, torch.Tensor):
            y, tuple_out = out, False
        else:
            return None
        start = self.start[name]
        if x is None or y.grad_fn is None or _seq(y.grad_fn) <= start:
            return None  # no output computed inside (an identity, a container returning its input)
        node: Any = y.grad_fn
        post: Any = None
        if type(node).__name__ in _POST_ACTS:
            inner = node.next_functions[0][0]
            if inner is None:
                return None
            post, node = node, inner
        if type(node).__name__ != "AddBackward0" or _seq(node) <= start:
            return None
        found_x, operands, stack, chain = 0, [], [node], {id(node)}
        while stack:
            n = stack.pop()
            for nf, _ in n.next_functions:
                if nf is None:
                    continue
                if x.grad_fn is not None and nf is x.grad_fn:
                    found_x += 1
                elif type(nf).__name__ == "AddBackward0" and _seq(nf) > start:
                    stack.append(nf)
                    chain.add(id(nf))
                else:
                    operands.append(nf)
        info = BlockInfo(name, False, node=hash((id(node), id(x.grad_fn))),
                         extra_inputs=len(args) + len(kwargs) > 1)
        if found_x != 1:
            same = tuple(x.shape) == tuple(y.shape)
            info.reason = ("the other side of its sum is not its input (a projection shortcut, or a chain of "
                           "blocks)" if same else
                           f"its shortcut changes the shape {tuple(x.shape)} -> {tuple(y.shape)} (a projection / "
                           "downsampling)") if found_x == 0 else "it adds its input more than once"
            return info
        if tuple_out and any(isinstance(t, torch.Tensor) and t.grad_fn is not None and t is not y
                             and _seq(t.grad_fn) > start for t in out[1:]):
            info.reason = f"it returns a tuple of {len(out)} computed outputs"
            return info
        info.as_tuple = len(out) if tuple_out else 0
        if any(_seq(o) <= start for o in operands):
            info.reason = "its sum adds a tensor computed outside it"
            return info
        for o in operands:
            end = self._branch_end(name, o)
            if end is None:
                info.reason = f"its branch ends with {type(o).__name__.removesuffix('Backward0')} outside any submodule"
                return info
            if end not in info.branch_ends:
                info.branch_ends.append(end)
        if len(operands) > 1:
            info.branches = self._branches(name, operands, chain | {id(x.grad_fn)}, start)
        if post is not None:
            owner = self.made_by.get(id(post))
            if owner is not None and owner.startswith(name + "."):
                info.act = _fresh_act(self.real[owner])
            else:
                info.act = _POST_ACTS[type(post).__name__](post)
        info.removable = True
        return info

    def _branches(self, block: str, operands: list[Any], stop: set[int], start: int) -> list[Branch]:
        """Each operand's branch: the nodes it is computed from back to the block input or the previous sum,
        the modules all of whose outputs lie there (the outermost ones), and its innermost producer."""
        reach: list[set[int]] = []
        for o in operands:
            seen: set[int] = set()
            todo = [o]
            while todo:
                n = todo.pop()
                if n is None or id(n) in seen or id(n) in stop or _seq(n) <= start:
                    continue
                seen.add(id(n))
                todo.extend(nf for nf, _ in n.next_functions)
            reach.append(seen)
        out = []
        for o, seen in zip(operands, reach, strict=True):
            own = {m for m, ids in self.outs_of.items() if m.startswith(block + ".") and all(i in seen for i in ids)}
            top = tuple(m for m in self.names.values() if m in own and not any(m.startswith(p + ".") for p in own))
            n, layer = o, ""
            for _ in range(16):  # the innermost module producing the operand, through zero-keeping ops
                if self.first_by.get(id(n), "").startswith(block + "."):
                    layer = self.first_by[id(n)]
                    break
                nxt = [nf for nf, _ in n.next_functions if nf is not None and type(nf).__name__ != "AccumulateGrad"]
                if type(n).__name__ not in _ZERO_KEEPING or len(nxt) != 1:
                    break
                n = nxt[0]
            producer = next((m for m in top if layer == m or layer.startswith(m + ".")), "")
            out.append(Branch(layer, producer, top, {m: self.io[m] for m in top if m in self.io}))
        return out

    def _branch_end(self, block: str, node: Any) -> str | None:
        for _ in range(16):
            owner = self.made_by.get(id(node))
            if owner is not None and owner.startswith(block + "."):
                return owner
            if type(node).__name__ not in _ZERO_KEEPING:
                return None
            nxt = [nf for nf, _ in node.next_functions
                   if nf is not None and type(nf).__name__ != "AccumulateGrad"]
            if len(nxt) != 1:
                return None
            node = nxt[0]
        return None


def _trace(model: nn.Module, example_inputs: Any) -> dict[str, BlockInfo]:
    def run(m: nn.Module, x: Any) -> dict[str, BlockInfo]:
        t = _Tracer(m, model)
        hs = []
        for mod in m.modules():
            hs.append(mod.register_forward_pre_hook(t.pre, with_kwargs=True))
            hs.append(mod.register_forward_hook(t.post, with_kwargs=True))
        x = _grad_inputs(x)
        try:
            with preserve_mode(m), torch.enable_grad():
                m.eval()
                forward_fn(m, x)
        finally:
            for h in hs:
                h.remove()
        return t.infos

    try:
        return run(meta_twin(model), to_meta(example_inputs))
    except Exception:
        pass
    try:
        return run(model, example_inputs)
    except PrunekitError:
        raise
    except Exception as exc:
        raise PrunekitError(f"cannot run the model with the example inputs ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def _grad_inputs(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        # not a leaf: a block fed the model input directly sees an autograd node for it
        return x.detach().clone().requires_grad_(True) * 1 if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _grad_inputs(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_grad_inputs(v) for v in x)
    return x


def block_analysis(model: nn.Module, example_inputs: Any) -> dict[str, BlockInfo]:
    """Every module whose output is a sum onto its input, with whether and why it can (not) be removed.

    Of modules sharing one sum and input (a wrapper around a block) only the outermost removable one is kept;
    a module containing other blocks (a stage) is kept but not removable.
    """
    infos = _trace(model, example_inputs)
    by_node: dict[int, BlockInfo] = {}
    for info in infos.values():  # hooks fire inner first: the outermost module of a sum comes last
        if info.removable or not by_node.get(info.node, info).removable:
            by_node[info.node] = info
    kept = {i.name: i for i in by_node.values()}
    for info in kept.values():
        inner = [n for n in kept if n.startswith(info.name + ".") and kept[n].removable]
        if inner and info.removable:
            info.removable, info.reason = False, f"it contains residual blocks ({inner[0]!r}, ...); remove those"
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(kept.items(), key=lambda kv: order.get(kv[0], 0)))


def block_kind(m: nn.Module) -> str | None:
    """'residual' (children ``branch``, ``shortcut``, ``act``: prunekit's protocol), 'torchvision' (children laid
    out like torchvision's BasicBlock / Bottleneck), or None. Names only: SSS uses it to place its factors and
    the old calls without example inputs use it to pick candidates, which :func:`remove_blocks` then checks in
    the graph of the block itself (so a block merely *named* like these is never trusted)."""
    kids = dict(m.named_children())
    if {"branch", "shortcut", "act"} <= set(kids):
        return "residual"
    if {"conv1", "bn1", "conv2", "bn2", "relu"} <= set(kids) and hasattr(m, "downsample"):
        return "torchvision"
    return None


def _guess_input(m: nn.Module) -> torch.Tensor | None:
    """A small input for block ``m`` alone, from its first conv / linear layer (old calls without inputs)."""
    for layer in m.modules():
        if isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed:
            spatial = {1: (16,), 2: (8, 8), 3: (4, 4, 4)}[len(layer.kernel_size)]
            p = next(layer.parameters())
            return torch.randn(2, layer.in_channels, *spatial, generator=torch.Generator().manual_seed(0)).to(p)
        if isinstance(layer, nn.Linear):
            return torch.randn(2, layer.in_features, generator=torch.Generator().manual_seed(0)).to(layer.weight)
    return None


def _local(m: nn.Module) -> tuple[nn.Module, torch.Tensor, BlockInfo | None]:
    """Block ``m`` analysed on its own (wrapped as child ``block``) with a guessed input."""
    from collections import OrderedDict

    wrapper = nn.Sequential(OrderedDict(block=m))
    x = _guess_input(m)
    if x is None:
        return wrapper, torch.empty(0), None
    try:
        return wrapper, x, block_analysis(wrapper, x).get("block")
    except PrunekitError:
        return wrapper, x, None


def residual_blocks(model: nn.Module, example_inputs: Any = None) -> list[str]:
    """Names of the residual blocks :func:`remove_blocks` can remove, found in the traced graph, in module order.

    Without ``example_inputs`` (old call, kept for counting depth) the modules :func:`block_kind` recognises,
    whatever their shortcut; nothing is removed on that basis (see :func:`removable_blocks`).
    """
    if example_inputs is None:
        return [n for n, m in model.named_modules() if n and block_kind(m) is not None]
    return [n for n, i in block_analysis(model, example_inputs).items() if i.removable]


def removable_blocks(model: nn.Module, example_inputs: Any = None) -> list[str]:
    """Names of the blocks :func:`remove_blocks` accepts: with ``example_inputs`` :func:`residual_blocks`;
    without (old call) the :func:`block_kind` candidates whose own graph, on an input guessed from their first
    conv / linear layer, is ``act(x + branch)`` with an identity shortcut."""
    if example_inputs is None:
        out = []
        for n in residual_blocks(model):
            info = _local(model.get_submodule(n))[2]
            if info is not None and info.removable:
                out.append(n)
        return out
    return residual_blocks(model, example_inputs)


@contextlib.contextmanager
def _branches_zeroed(model: nn.Module, ends: Iterable[str], tuples: bool = False) -> Iterator[None]:
    """The model with the outputs of the branch-ending modules replaced by zeros (with ``tuples``, also the
    first element of a tuple output, as attention modules return)."""
    def zero(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if tuples and isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            return (torch.zeros_like(out[0]), *out[1:])
        return torch.zeros_like(out) if isinstance(out, torch.Tensor) else out

    hs = [model.get_submodule(n).register_forward_hook(zero) for n in dict.fromkeys(ends)]
    try:
        yield
    finally:
        for h in hs:
            h.remove()


def remove_blocks(model: nn.Module, names: Iterable[str], example_inputs: Any = None, *,
                  check: bool = True) -> SurgeryReport:
    """Replace each named residual block by what is left when its branch is 0, in place.

    The replacement is the block's post-sum activation (a fresh, never in-place copy) or an identity
    (:class:`Skip` when the block is called with more than its input). With ``example_inputs`` blocks are
    found in the traced graph whatever their class (see the module docstring), and the result is checked
    against the network whose branch outputs are zeroed (two forward passes); a mismatch restores the model
    and raises. Without them (old call) each block is analysed and checked on its own with an input guessed
    from its first conv / linear layer.

    Raises :class:`PrunekitError` naming the block when a name is unknown, is not a residual block, or has a
    projection shortcut; nothing is changed in that case.
    """
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))
    report = SurgeryReport(params_before=count_params(model))
    infos = block_analysis(model, example_inputs) if example_inputs is not None and names else {}
    todo: list[tuple[str, nn.Module, nn.Module]] = []
    ends: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise PrunekitError(f"remove_blocks: {name!r} is not a block name")
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise PrunekitError(f"remove_blocks: the model has no module {name!r}") from None
        if any(name.startswith(other + ".") for other in names if other != name):
            raise PrunekitError(f"remove_blocks: {name!r} lies inside another block being removed")
        if example_inputs is None:  # old call: the block alone, on a guessed input, checked locally
            wrapper, x, local = _local(m)
            if local is None or not local.removable:
                why = local.reason if local is not None else "it is not a residual block on its own"
                raise PrunekitError(f"remove_blocks: block {name!r} ({type(m).__name__}) cannot be removed: {why} "
                                    "(pass example_inputs to analyse it inside the whole model)")
            plain = local.act if local.act is not None else nn.Identity()
            if check:
                with _branches_zeroed(wrapper, local.branch_ends):
                    ref_local = run_model(wrapper, x)
                problem = compare_outputs(ref_local, run_model(plain, x))[1]
                if problem:
                    raise PrunekitError(f"remove_blocks: replacing block {name!r} does not equal zeroing its "
                                        f"branch: {problem}")
            todo.append((name, m, plain))
            continue
        info = infos.get(name)
        if info is None:
            raise PrunekitError(f"remove_blocks: {name!r} ({type(m).__name__}) is not a residual block: its output "
                                "is not its input plus a branch (or it does not run on example_inputs)")
        if not info.removable:
            raise PrunekitError(f"remove_blocks: block {name!r} ({type(m).__name__}) cannot be removed: {info.reason}")
        new: nn.Module = (Skip(info.act, info.as_tuple) if info.extra_inputs or info.as_tuple else
                          info.act if info.act is not None else nn.Identity())
        todo.append((name, m, new))
        ends += info.branch_ends
    ref = None
    if check and example_inputs is not None and todo:
        with _branches_zeroed(model, ends):
            ref = run_model(model, example_inputs)
    diff, problem = _swap_checked(model, todo, ref, example_inputs)
    if problem:
        which = ", ".join(repr(n) for n, _, _ in todo[:4])
        raise PrunekitError(f"remove_blocks: replacing block {which} does not equal zeroing its branch: {problem}; "
                            "the model was restored")
    if ref is not None:
        report.verified, report.max_diff = True, diff
    for name, _, new in todo:
        report.blocks[name] = type(new).__name__
    report.params_after = count_params(model)
    if todo:
        history.record(model, {"op": "blocks", "names": [n for n, _, _ in todo],
                               "input_shapes": recorded_shapes(example_inputs)})
    return report


class ZeroBranch(nn.Module):
    """What is left of a removed branch's producer: zeros with the input's leading dimensions and ``width``
    channels last (a tuple of length ``as_tuple``, output first, when the producer returned one); the sum
    that read it then adds 0. Extra arguments (masks, flags) are ignored."""

    def __init__(self, width: int, as_tuple: int = 0) -> None:
        super().__init__()
        self.width, self.as_tuple = width, as_tuple

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        y = x.new_zeros(*x.shape[:-1], self.width)
        return (y, *([None] * (self.as_tuple - 1))) if self.as_tuple else y


def _branch_replacements(block: str, br: Branch) -> list[tuple[str, nn.Module]]:
    """The producer becomes a :class:`ZeroBranch`, the other modules feeding only this branch (its norm)
    identities; refused when a shape says that is not what they compute."""
    out: list[tuple[str, nn.Module]] = []
    for m in br.modules:
        if m not in br.io:
            raise PrunekitError(f"remove_branches: {m!r} of block {block!r} did not run on the example inputs")
        x_shape, y_shape, as_tuple = br.io[m]
        if m == br.producer:
            if x_shape[:-1] != y_shape[:-1]:
                raise PrunekitError(f"remove_branches: the branch of block {block!r} through {m!r} changes the "
                                    f"shape {x_shape} -> {y_shape} beyond its last dimension")
            out.append((m, ZeroBranch(y_shape[-1], as_tuple)))
        elif x_shape == y_shape and not as_tuple:
            out.append((m, nn.Identity()))
        else:
            raise PrunekitError(f"remove_branches: {m!r} feeds the branch of block {block!r} but changes the shape")
    return out


def remove_branches(model: nn.Module, layers: Iterable[str], example_inputs: Any, *, check: bool = True
                    ) -> SurgeryReport:
    """Remove single branches of blocks whose sum has several (a transformer layer: ``x + attn(ln1(x))``, then
    ``+ mlp(ln2(.))``), in place. Each branch is named by its layer (:attr:`Branch.layer`, e.g. the attention's
    output projection): its producer becomes :class:`ZeroBranch` and the other modules that feed only it (its
    norm) identities. Verified against the network whose branch layers output zeros (restored and refused in
    one line on a mismatch)."""
    if isinstance(layers, str):
        layers = [layers]
    layers = list(dict.fromkeys(layers))
    report = SurgeryReport(params_before=count_params(model))
    if not layers:
        return report
    infos = block_analysis(model, example_inputs)
    todo: list[tuple[str, nn.Module, nn.Module]] = []
    for layer in layers:
        found = [(b, br) for b, i in infos.items() if i.removable for br in i.branches if br.layer == layer]
        if len(found) != 1 or not found[0][1].producer:
            raise PrunekitError(f"remove_branches: {layer!r} does not produce one branch of a residual sum that can "
                                "be removed alone")
        block, br = found[0]
        for name, new in _branch_replacements(block, br):
            if any(name == n for n, _, _ in todo):
                raise PrunekitError(f"remove_branches: {name!r} is listed twice")
            todo.append((name, model.get_submodule(name), new))
    ref = None
    if check:
        with _branches_zeroed(model, layers, tuples=True):
            ref = run_model(model, example_inputs)
    diff, problem = _swap_checked(model, todo, ref, example_inputs)
    if problem:
        raise PrunekitError(f"remove_branches: removing the branch of {layers[0]!r} does not equal zeroing it: "
                            f"{problem}; the model was restored")
    if ref is not None:
        report.verified, report.max_diff = True, diff
    for name, _, new in todo:
        report.blocks[name] = type(new).__name__
    report.params_after = count_params(model)
    history.record(model, {"op": "branches", "names": layers, "input_shapes": recorded_shapes(example_inputs)})
    return report


def _swap_checked(model: nn.Module, todo: list[tuple[str, nn.Module, nn.Module]], ref: Any,
                  example_inputs: Any) -> tuple[float, str]:
    """Put each ``(name, old, new)`` replacement in place; given the reference output ``ref`` (the network with
    the removed parts zeroed), compare and put the old modules back on a mismatch. Returns (max abs difference,
    "" or the problem); unchecked when ``ref`` is None."""
    for name, _, new in todo:
        set_submodule(model, name, new)
    if ref is None:
        return 0.0, ""
    try:
        diff, problem = compare_outputs(ref, run_model(model, example_inputs))
    except Exception as exc:
        diff, problem = float("inf"), f"the model no longer runs ({type(exc).__name__}: {str(exc)[:160]})"
    if problem:
        for name, old, _ in reversed(todo):
            set_submodule(model, name, old)
    return diff, problem
