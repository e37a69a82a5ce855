"""One YAML + ``--set key=value`` loader for every prunekit config (experiment, compare), with bounded work.

A config file is untrusted input: the loader builds only plain data (a ``SafeLoader``: no Python objects)
and bounds the work a small file can cause before anything looks at its values:

* the document size (:data:`MAX_BYTES`) and the length of one ``--set`` assignment;
* the nesting depth (:data:`MAX_DEPTH`), checked while the document is composed, so that 100,000 ``[`` end
  in one line instead of a ``RecursionError``;
* the number of nodes once every alias is expanded (:data:`MAX_NODES`), counted on the composed graph before
  anything is constructed, so that a 500-byte "billion laughs" file is refused in microseconds instead of
  building (and later printing) gigabytes; recursive aliases are refused too;
* a key given twice in one mapping is an error (YAML would silently keep the last one).

Values that reach an error message go through :func:`short`, which never formats more than a few dozen
characters of them.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from prunekit.errors import PrunekitError

MAX_BYTES = 1 << 20  # a config is a few kB; 1 MiB leaves room for long per-layer lists
MAX_DEPTH = 32  # sections nest 3-4 deep; per-layer options add one or two
MAX_NODES = 100_000  # scalars, lists and mappings after alias expansion
MAX_SET_CHARS = 10_000  # one --set assignment

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 48
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 6
_short.maxlevel = 3
_short.maxlong = 24


def short(value: Any) -> str:
    """A bounded ``repr`` for error messages: a huge or deeply nested value becomes ``[1, 2, ...]``."""
    try:
        text = _short.repr(value)
    except Exception:  # a value whose repr fails still gets a name
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


class YamlLimitError(yaml.YAMLError):
    """The document exceeds a bound (depth, expanded size) or repeats a key."""


class Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting depth, refuses duplicate keys and reads ``5e-4`` as a float.

    (YAML 1.1 wants ``5.0e-4``; people write ``5e-4``.)
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlLimitError(f"nesting deeper than {MAX_DEPTH} levels at line {mark.line + 1}")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults" merges; explicit keys then override (YAML's rule)
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: SafeConstructor reports it
                break
            if dup:
                raise ConstructorError(None, None, f"duplicate key {short(key)} (given twice in one mapping)",
                                       key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _expanded_size(root: Node) -> int:
    """Number of nodes of ``root`` with every alias expanded (stops counting past :data:`MAX_NODES`)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:  # iterative post-order walk over the graph; aliases are shared node objects
        node, done = stack.pop()
        nid = id(node)
        if done:
            active.discard(nid)
            if isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = list(node.value)
            sizes[nid] = min(1 + sum(sizes[id(c)] for c in children), MAX_NODES + 1)
            continue
        if nid in sizes:
            continue
        if nid in active:
            raise YamlLimitError("a recursive alias (a node that contains itself)")
        if isinstance(node, ScalarNode):
            sizes[nid] = 1
            continue
        active.add(nid)
        stack.append((node, True))
        kids = [n for pair in node.value for n in pair] if isinstance(node, MappingNode) else node.value
        for child in kids:
            if id(child) in active:
                raise YamlLimitError("a recursive alias (a node that contains itself)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def parse_yaml(text: str) -> Any:
    """Plain data from one YAML document, within the bounds above (raises ``yaml.YAMLError``)."""
    if len(text) > MAX_BYTES:
        raise YamlLimitError(f"larger than {MAX_BYTES // 1024} kB")
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if isinstance(node, MappingNode | SequenceNode) and _expanded_size(node) > MAX_NODES:
            raise YamlLimitError(f"more than {MAX_NODES:,} values once its aliases are expanded")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where} ({' '.join(str(problem).split())[:200]})"


def read_yaml(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """The mapping at the top of the YAML file ``path`` (an empty file is an empty mapping).

    Every failure is a :class:`PrunekitError` naming the file: missing, too large, not text, not YAML,
    over a bound, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise PrunekitError(f"{p}: {what} file not found")
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise PrunekitError(f"{p}: {size:,} bytes; a {what} file may hold at most {MAX_BYTES:,}")
        with p.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise PrunekitError(f"{p}: a {what} file may hold at most {MAX_BYTES:,} bytes")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PrunekitError(f"{p}: not a text file (UTF-8)") from None
    try:
        data = parse_yaml(text)
    except RecursionError:
        raise PrunekitError(f"{p}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        raise PrunekitError(f"{p}: not valid YAML{_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PrunekitError(f"{p}: a {what} must be a YAML mapping of keys, got a {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value is parsed as YAML (``0.05`` -> float, ``[30, 60]`` -> list, ``null`` -> None).

    Text that is not YAML stays a string; a value over a bound is an error.
    """
    try:
        return parse_yaml(text)
    except YamlLimitError as exc:
        raise PrunekitError(f"--set value {short(text)}: {exc}") from None
    except (yaml.YAMLError, RecursionError):
        return text


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set key.sub=value`` to the mapping ``tree`` in place.

    Missing sections are created (a section set to null is not a section); whether a key is valid is the
    schema's business (checked afterwards, with the list of valid keys). A key path through a value that is
    not a mapping is an error.
    """
    if len(assignment) > MAX_SET_CHARS:
        raise PrunekitError(f"--set {short(assignment)}: longer than {MAX_SET_CHARS:,} characters")
    if "=" not in assignment:
        raise PrunekitError(f"--set {short(assignment)}: expected key=value, e.g. --set optim.lr=0.05")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if any(not p.strip() for p in parts):
        raise PrunekitError(f"--set {short(key)}: expected a key such as optim.lr (dot-separated names)")
    node: dict[str, Any] = tree
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            here = ".".join(parts[: i + 1])
            raise PrunekitError(f"--set {key}: {here!r} is {short(child)}, not a section (a mapping of keys)")
        node = child
    node[parts[-1]] = parse_value(raw)


def load(path: str | os.PathLike[str] | None, overrides: list[str] | tuple[str, ...] = (),
         what: str = "config") -> dict[str, Any]:
    """The user's mapping: the YAML file (or nothing) with the ``--set`` overrides applied, not yet validated."""
    tree = read_yaml(path, what) if path is not None else {}
    for o in overrides:
        apply_override(tree, o)
    return tree


def merge(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``new``, section by section (mappings merge, other values replace); copies."""
    out: dict[str, Any] = {k: _copy(v) for k, v in base.items()}
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = _copy(v)
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def dump(tree: Mapping[str, Any]) -> str:
    """A config as YAML (saved beside every run so it can be repeated)."""
    return yaml.safe_dump(dict(tree), sort_keys=False)


__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "Loader", "apply_override", "dump", "load", "merge",
           "parse_value", "parse_yaml", "read_yaml", "short"]
