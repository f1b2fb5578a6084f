"""torch's functions by name: which function objects a handler key covers (`resolve`), the name a
row is labelled with (`op_name`), and the calls that compute nothing (`FREE`). Imports nothing
else of dnnlab.opcount.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

# Calls that compute nothing countable: views, reshapes, copies, creation, indexing, selection,
# conversions, random fills (their results are never "not counted").
FREE = set("""
__get__ __getitem__ __setitem__ __len__ __iter__ __format__ __bool__ __index__ __reduce_ex__
__contains__ __hash__ __deepcopy__ __array__ _has_compatible_shallow_copy_type
view view_as reshape reshape_as flatten unflatten permute transpose t swapaxes swapdims movedim
moveaxis contiguous expand expand_as broadcast_to broadcast_tensors repeat repeat_interleave
tile squeeze unsqueeze narrow select index_select gather take take_along_dim masked_select
split split_with_sizes tensor_split chunk unbind cat concat concatenate stack hstack vstack
flip fliplr flipud roll rot90 diagonal diag_embed tril triu tril_ triu_ as_strided unfold
pad constant_pad_nd pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle
to type type_as float half double bfloat16 long int short bool byte char cpu cuda clone
detach detach_ requires_grad_ retain_grad register_hook data_ptr numpy tolist item
empty empty_like zeros zeros_like ones ones_like full full_like arange range linspace
logspace eye tensor as_tensor new_empty new_zeros new_ones new_full new_tensor rand randn
randint rand_like randn_like randint_like randperm normal_ uniform_ bernoulli bernoulli_
dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
fill_ zero_ copy_ masked_fill masked_fill_ masked_scatter where index_put index_put_
index_fill index_copy scatter scatter_ embedding embedding_bag one_hot nonzero argwhere
argmax argmin sort argsort topk unique unique_consecutive searchsorted bucketize
meshgrid cartesian_prod resolve_conj resolve_neg view_as_real view_as_complex real imag
size dim numel stride storage_offset is_contiguous is_floating_point element_size
nelement ndimension get_device data grad T mT H mH
""".split())



# -- torch's functions, by name ------------------------------------------------------------------

def _namespaces() -> list:
    import torch.nn.attention.flex_attention as flex
    import torch.nn.functional as F

    return [torch, torch.Tensor, F, torch.linalg, torch.special, torch.fft, torch._C._nn,
            torch._VF, torch._C._VariableFunctions, flex]


@functools.lru_cache(maxsize=1)
def torch_functions() -> dict[str, tuple]:
    """{name: the torch function objects of that `__name__`}: every callable of torch's
    namespaces (torch, Tensor, nn.functional, linalg, special, fft, _VF, flex attention) and
    every function torch.overrides lists as overridable."""
    out: dict[str, list] = {}

    def add(f: Any, alias: str | None = None) -> None:
        name = getattr(f, "__name__", None)
        if not (isinstance(name, str) and callable(f) and not isinstance(f, type)):
            return
        for key in {name, alias or name}:  # Tensor.__rtruediv__ is __rdiv__: both names
            objs = out.setdefault(key, [])
            if not any(o is f for o in objs):
                objs.append(f)
    for ns in _namespaces():
        for attr in dir(ns):
            try:
                add(getattr(ns, attr), attr)
            except Exception:  # noqa: BLE001 - a lazy attribute that cannot load here
                continue
    for fs in torch.overrides.get_overridable_functions().values():
        for f in fs:
            add(f)
    return {k: tuple(v) for k, v in out.items()}


def _is_module_class(key: Any) -> bool:
    return isinstance(key, type) and issubclass(key, torch.nn.Module)


# Tensor methods the counter never sees under their own name: Python's operators reach a
# TorchFunctionMode as the named method (`a + a` arrives as Tensor.add).
UNSEEN = {"__add__": "add", "__radd__": "add", "__iadd__": "add_", "__sub__": "sub",
          "__isub__": "sub_", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul_",
          "__truediv__": "div", "__itruediv__": "div_", "__div__": "div", "__idiv__": "div_",
          "__matmul__": "matmul", "__neg__": "neg", "__abs__": "abs", "__pow__": "pow",
          "__ipow__": "pow_", "__ne__": "ne", "__lt__": "lt", "__le__": "le", "__gt__": "gt",
          "__ge__": "ge", "__mod__": "remainder"}


def _ops_keys(key: Any) -> tuple | None:
    """The keys of an operator: a `torch.library` custom op (CustomOpDef), an OpOverloadPacket
    (its packet and every overload), an OpOverload, a higher-order op, or an "ns::name[.overload]"
    string. None for anything else."""
    from torch._library.custom_ops import CustomOpDef

    if isinstance(key, CustomOpDef):
        key = key._opoverload.overloadpacket
    if isinstance(key, str) and "::" in key:
        ns, _, rest = key.partition("::")
        name, _, overload = rest.partition(".")
        try:
            key = getattr(getattr(torch.ops, ns), name)
            if overload:
                key = getattr(key, overload)
        except (AttributeError, RuntimeError):
            raise ValueError(f"'{key}' is no operator (torch.ops.{ns} has no "
                             f"'{rest}')") from None
    if isinstance(key, torch._ops.OpOverloadPacket):
        return (key, *[getattr(key, o) for o in key.overloads()])
    if isinstance(key, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return (key,)
    return None


def _refuse_unseen(name: str) -> None:
    if name in UNSEEN:
        seen = UNSEEN[name]
        raise ValueError(f"'Tensor.{name}' never reaches the counter: Python's operator arrives "
                         f"as '{seen}'; register torch.{seen} (covers Tensor.{seen}) instead")


def resolve(key: Callable | str | type) -> tuple:
    """The keys a registration covers: a module class itself; a torch function and the torch
    functions of its name; a name's torch functions; an operator (custom op, OpOverloadPacket,
    OpOverload, "ns::name"): the operator and its overloads. Anything else raises ValueError,
    as does a Tensor operator method the counter never sees (`Tensor.__add__`: arrives as
    `Tensor.add`)."""
    if _is_module_class(key):
        return (key,)
    ops = _ops_keys(key)
    if ops is not None:
        return ops
    if isinstance(key, str):
        _refuse_unseen(key)
        objs = torch_functions().get(key)
        if not objs:
            raise ValueError(f"'{key}' is not a torch function (no function of torch, Tensor, "
                             "nn.functional, linalg, special or fft has that name)")
        return objs
    name = getattr(key, "__name__", None)
    if not callable(key) or not isinstance(name, str):
        raise ValueError(f"cannot register a handler for {key!r}: not a torch function")
    objs = torch_functions().get(name, ())
    if not any(o is key for o in objs):
        raise ValueError(f"{key!r} is not a torch function the counter can see (register a "
                         "function of torch, Tensor or nn.functional, an operator (custom op, "
                         "torch.ops.ns.name, 'ns::name'), or a module class)")
    _refuse_unseen(name)
    return objs


def op_name(key: Callable | str | type) -> str:
    """The name a row is labelled with: the function's (or module class's) `__name__`."""
    if isinstance(key, str):
        return key
    ops = _ops_keys(key)
    if ops is not None:
        return str(ops[0])
    name = getattr(key, "__name__", None)
    if not name:
        raise ValueError(f"cannot register a handler for {key!r}: it has no __name__")
    return name
