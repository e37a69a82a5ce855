"""Sparse model files: only the non-zeros are stored, and loading gives the same weights bit for bit.

Layout (one safetensors file, written atomically with :func:`prunekit.io.write_safetensors`):

* ``values/<dtype>``: 1-D concatenation, in entry order, of the stored values of every tensor of that dtype
  (all elements for a dense entry, the non-zeros for a sparse one);
* ``bitmap``: uint8, concatenation of the packed occupancy bits (little bit order, ``ceil(n / 8)`` bytes per
  ``bitmap`` entry, padding bits zero);
* ``index/<int16|int32|int64>``: concatenation of the flat positions of the non-zeros of ``index`` entries
  (strictly increasing);
* JSON metadata: format, the architecture record (:func:`prunekit.io.architecture`) and one entry per
  state-dict tensor ``{key, dtype, shape, enc, nnz}``.

Each tensor takes the cheapest of dense, values+bitmap and values+indices. "Zero" means all bits zero, so
``-0.0`` and NaN are kept as values and the round trip is exact. Offsets are implied by the entry order and
checked exactly; a bitmap whose popcount disagrees with ``nnz``, an index out of range or out of order, a
forged shape or dtype, or a file that would decode to far more memory than it holds raises
:class:`PrunekitError`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import architecture, prepare, read_safetensors, write_safetensors

FORMAT = "prunekit-sparse/1"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16, torch.bool: torch.uint8}
_INDEX = {"int16": torch.int16, "int32": torch.int32, "int64": torch.int64}
_MAX_ENTRIES = 1_000_000
_MAX_DIMS = 8


def _index_dtype(n: int) -> str:
    if n <= 2**15:
        return "int16"
    if n <= 2**31:
        return "int32"
    return "int64"


def _nonzero(t: torch.Tensor) -> torch.Tensor:
    """Elements whose bits are not all zero (so -0.0 and NaN count as values)."""
    flat = t.reshape(-1)
    bits = flat.view(_BITS.get(t.dtype, t.dtype))
    return bits != 0


def encode(t: torch.Tensor) -> tuple[str, int, torch.Tensor, torch.Tensor | None, str | None]:
    """Cheapest encoding of one tensor: ``(enc, nnz, values, index_or_bitmap, index_dtype)``."""
    t = t.detach().cpu().contiguous()
    n, b = t.numel(), t.element_size()
    nz = _nonzero(t)
    nnz = int(nz.sum())
    idt = _index_dtype(n)
    costs = {
        "dense": n * b,
        "bitmap": nnz * b + math.ceil(n / 8),
        "index": nnz * (b + _INDEX[idt].itemsize),
    }
    enc = min(costs, key=lambda k: (costs[k], k != "dense"))
    flat = t.reshape(-1)
    if enc == "dense":
        return enc, nnz, flat.clone(), None, None
    values = flat[nz].clone()
    if enc == "bitmap":
        packed = np.packbits(nz.numpy(), bitorder="little")
        return enc, nnz, values, torch.from_numpy(packed.copy()), None
    pos = torch.nonzero(nz).flatten().to(_INDEX[idt])
    return enc, nnz, values, pos, idt


def ideal_bytes(t: torch.Tensor) -> int:
    """Non-zeros x bytes per value plus the cheaper index cost (bitmap or positions), or dense if smaller."""
    n, b = t.numel(), t.element_size()
    nnz = int(_nonzero(t.detach().cpu().contiguous()).sum())
    return min(n * b, nnz * b + min(math.ceil(n / 8), nnz * _INDEX[_index_dtype(n)].itemsize))


def save_sparse(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                base: nn.Module | None = None) -> Path:
    """Save ``model`` storing only its non-zeros; :func:`load_sparse` rebuilds it (zoo models) or fills it.

    ``base`` (a user's network as built) records the structural history, as :func:`prunekit.io.save` does.
    """
    path = Path(path)
    model = getattr(model, "module", model)
    arch = architecture(model, base=base)
    values: dict[str, list[torch.Tensor]] = {}
    bitmaps: list[torch.Tensor] = []
    index: dict[str, list[torch.Tensor]] = {}
    entries = []
    for key, t in model.state_dict().items():
        if t.dtype not in _NAMES:
            raise PrunekitError(f"save_sparse: tensor {key} has unsupported dtype {t.dtype}")
        enc, nnz, vals, aux, idt = encode(t)
        dname = _NAMES[t.dtype]
        values.setdefault(dname, []).append(vals)
        if enc == "bitmap":
            bitmaps.append(aux)  # type: ignore[arg-type]
        elif enc == "index":
            index.setdefault(idt, []).append(aux)  # type: ignore[arg-type]
        entry: dict[str, Any] = {"key": key, "dtype": dname, "shape": list(t.shape), "enc": enc, "nnz": nnz}
        if idt is not None:
            entry["index_dtype"] = idt
        entries.append(entry)
    blobs = {f"values/{d}": vs for d, vs in values.items()}
    blobs["bitmap"] = bitmaps
    blobs.update({f"index/{d}": xs for d, xs in index.items()})
    tensors = {name: torch.cat(parts) for name, parts in blobs.items() if sum(p.numel() for p in parts)}
    write_safetensors(path, tensors, {"format": FORMAT, "architecture": arch, "extra": extra or {},
                                      "entries": entries})
    return path


def _bad(path: Any, what: str) -> PrunekitError:
    return PrunekitError(f"{path}: {what}; the file is corrupt or was not written by prunekit.save_sparse")


def _check_entry(path: Any, i: int, e: Any) -> tuple[str, str, list[int], str, int, str | None]:
    if not isinstance(e, dict):
        raise _bad(path, f"entry {i} is not an object")
    key, dname, shape, enc, nnz = e.get("key"), e.get("dtype"), e.get("shape"), e.get("enc"), e.get("nnz")
    if not isinstance(key, str) or not key or len(key) > 1000:
        raise _bad(path, f"entry {i} has a bad key")
    if dname not in _DTYPES:
        raise _bad(path, f"{key}: unknown dtype {dname!r}")
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
            or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**40 for s in shape)):
        raise _bad(path, f"{key}: bad shape {shape!r}")
    n = math.prod(shape)
    if enc not in ("dense", "bitmap", "index"):
        raise _bad(path, f"{key}: unknown encoding {enc!r}")
    if isinstance(nnz, bool) or not isinstance(nnz, int) or not 0 <= nnz <= n:
        raise _bad(path, f"{key}: bad non-zero count {nnz!r} for {n} elements")
    idt = e.get("index_dtype")
    if enc == "index" and idt != _index_dtype(n):
        raise _bad(path, f"{key}: index dtype {idt!r} does not fit {n} elements")
    if enc != "index" and idt is not None:
        raise _bad(path, f"{key}: index dtype given for a {enc} entry")
    if set(e) - {"key", "dtype", "shape", "enc", "nnz", "index_dtype"}:
        raise _bad(path, f"{key}: unexpected fields {sorted(set(e) - {'key', 'dtype', 'shape', 'enc', 'nnz'})}")
    return key, dname, shape, enc, nnz, idt


def _entries(path: Any, doc: dict[str, Any]) -> list[tuple[str, str, list[int], str, int, str | None]]:
    """The validated entry list of a sparse file's metadata (nothing decoded yet)."""
    if doc.get("format") != FORMAT:
        raise PrunekitError(f"{path}: not a prunekit sparse model file (format {ascii(doc.get('format'))[:100]}, "
                            f"want {FORMAT}); dense files load with prunekit.load")
    entries = doc.get("entries")
    if not isinstance(entries, list) or len(entries) > _MAX_ENTRIES:
        raise _bad(path, "entry list missing or malformed")
    checked = [_check_entry(path, i, e) for i, e in enumerate(entries)]
    keys = [c[0] for c in checked]
    if len(set(keys)) != len(keys):
        raise _bad(path, "a tensor key appears twice")
    return checked


def decode_file(path: str | os.PathLike, max_expand: float = 1024.0
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and fully validate a sparse file: ``(state dict, metadata)``.

    Nothing is checked against an architecture here: :func:`load_sparse` checks every entry's key, shape
    and dtype against the network first, so a file cannot make it decode more than the network holds.
    """
    tensors, doc = read_safetensors(path)
    return _decode(path, tensors, _entries(path, doc), max_expand), doc


def _decode(path: Any, tensors: dict[str, torch.Tensor],
            checked: list[tuple[str, str, list[int], str, int, str | None]], max_expand: float
            ) -> dict[str, torch.Tensor]:
    # size bound before allocating anything: decoded bytes vs bytes really stored
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    decoded = sum(math.prod(c[2]) * _DTYPES[c[1]].itemsize for c in checked)
    if decoded > max_expand * stored + 2**20:
        raise _bad(path, f"it would decode to {decoded:,} bytes from {stored:,} stored (more than "
                         f"max_expand={max_expand:g}x)")
    need_v: dict[str, int] = {}
    need_b, need_i = 0, dict.fromkeys(_INDEX, 0)
    for _key, dname, shape, enc, nnz, idt in checked:
        n = math.prod(shape)
        need_v[dname] = need_v.get(dname, 0) + (n if enc == "dense" else nnz)
        if enc == "bitmap":
            need_b += math.ceil(n / 8)
        elif enc == "index":
            need_i[idt] += nnz  # type: ignore[index]
    expected = {f"values/{d}": (_DTYPES[d], c) for d, c in need_v.items() if c}
    if need_b:
        expected["bitmap"] = (torch.uint8, need_b)
    expected.update({f"index/{d}": (_INDEX[d], c) for d, c in need_i.items() if c})
    for name in tensors:
        if name not in expected:
            raise _bad(path, f"unexpected tensor {name!r}")
    for name, (dt, count) in expected.items():
        t = tensors.get(name)
        if t is None:
            raise _bad(path, f"missing tensor {name!r}")
        if t.dtype != dt or t.dim() != 1 or t.numel() != count:
            raise _bad(path, f"tensor {name!r} is {t.dtype} {tuple(t.shape)}, the entries need {dt} ({count},)")
    off_v = dict.fromkeys(need_v, 0)
    off_b, off_i = 0, dict.fromkeys(_INDEX, 0)
    out: dict[str, torch.Tensor] = {}
    for key, dname, shape, enc, nnz, idt in checked:
        dt, n = _DTYPES[dname], math.prod(shape)
        vblob = tensors.get(f"values/{dname}", torch.empty(0, dtype=dt))
        if enc == "dense":
            out[key] = vblob[off_v[dname]:off_v[dname] + n].clone().reshape(shape)
            off_v[dname] += n
            continue
        vals = vblob[off_v[dname]:off_v[dname] + nnz]
        off_v[dname] += nnz
        if bool((_nonzero(vals) == 0).any()):
            raise _bad(path, f"{key}: a stored non-zero value is zero")
        flat = torch.zeros(n, dtype=dt)
        if enc == "bitmap":
            nb = math.ceil(n / 8)
            packed = tensors["bitmap"][off_b:off_b + nb].numpy()
            off_b += nb
            bits = np.unpackbits(packed, bitorder="little")
            if int(bits[n:].sum()):
                raise _bad(path, f"{key}: bitmap padding bits are set")
            mask = torch.from_numpy(bits[:n].astype(bool))
            if int(mask.sum()) != nnz:
                raise _bad(path, f"{key}: bitmap holds {int(mask.sum())} set bits but {nnz} values")
            flat[mask] = vals
        else:
            iblob = tensors.get(f"index/{idt}", torch.empty(0, dtype=torch.int64))
            pos = iblob[off_i[idt]:off_i[idt] + nnz].to(torch.int64)  # type: ignore[index]
            off_i[idt] += nnz  # type: ignore[index]
            if nnz and (int(pos[0]) < 0 or int(pos[-1]) >= n or bool((pos[1:] <= pos[:-1]).any())):
                raise _bad(path, f"{key}: indices out of range or not strictly increasing")
            flat[pos] = vals
        out[key] = flat.reshape(shape)
    return out


def load_sparse(path: str | os.PathLike, model: nn.Module | None = None, device: str | torch.device = "cpu",
                max_expand: float = 1024.0) -> nn.Module:
    """Load a file written by :func:`save_sparse`: the zoo architecture it records, or into ``model``.

    The network is rebuilt on the ``meta`` device first and every entry's key, shape and dtype is checked
    against it before any entry is decoded: a file can make us allocate no more than the network needs.
    ``max_expand`` also bounds decoded bytes / stored bytes.
    """
    tensors, doc = read_safetensors(path)
    checked = _entries(path, doc)
    prepared = prepare(doc.get("architecture"), str(path), model)
    prepared.check({key: (tuple(shape), _DTYPES[dname]) for key, dname, shape, *_ in checked})
    state = _decode(path, tensors, checked, max_expand)
    return prepared.materialise(state, device)
