"""Reading the YAML people write (policy files, their examples, the service's config file)
so that it means what it says.

PyYAML's ``safe_load`` keeps the last of two equal keys in a mapping without a word: a second
``offers:`` key drops every offer above it, a ``status: paused`` followed later in the same
offer by ``status: live`` makes it live. ``load_yaml`` refuses any key given twice in one
mapping, at any depth, naming the line and column of both (``DuplicateKeyError``). Keys are
compared as YAML reads them, so ``yes`` and ``true`` are the same key; a key that only comes
from a merge (``<<: *defaults``) may be overridden, as YAML intends.

It also reads numbers as people mean them rather than as YAML 1.1 does: ``1:30`` is the text
"1:30", not the sexagesimal number 90 (a ``window: 1:30`` would otherwise be 90 seconds), and
``010`` is the text "010", not the octal number 8 (where a number is expected it is read as
ten). Everything else is PyYAML's safe schema: ``yes``/``no``/``on``/``off`` are booleans and
``2026-01-01`` is a date, which the models refuse where text is expected.

Errors are ``yaml.YAMLError`` (``DuplicateKeyError`` is a ``MarkedYAMLError``): ``problem_mark``
locates them, and ``str()`` gives the file name, line and column.
"""

from __future__ import annotations

import io
import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["DuplicateKeyError", "describe", "load_yaml"]

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when installed: the same nodes, faster

_MERGE = "tag:yaml.org,2002:merge"
#: YAML 1.1's integers without the octal (010) and sexagesimal (1:30) forms
_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
#: YAML 1.1's floats without the sexagesimal form (1:30.5)
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class DuplicateKeyError(ConstructorError):
    """A key given twice in one mapping.

    ``path`` is where the mapping holding it sits in the document, keys and list indexes
    from the top, ending with the key (``("offers", 3, "status")``), and ``entry_id`` the
    ``id`` of the list entry it is in (an offer's or a policy's), when it has one."""

    path: tuple[str | int, ...] = ()
    entry_id: str | None = None
    #: every key given twice in the document, in order (this one first): the loader reads
    #: the whole document, so that all of them are reported at once
    duplicates: tuple[DuplicateKeyError, ...] = ()


class _Loader(_Base):
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def flatten_mapping(self, node: MappingNode) -> None:
        # Every mapping passes here before it is built (merged ones too), with only the keys
        # written in it: the place to see a key written twice.
        checked = self.__dict__.setdefault("_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.get(key)
                except TypeError:
                    continue  # an unhashable key: PyYAML refuses it on its own
                if seen is not None:
                    self.__dict__.setdefault("_duplicates", []).append(
                        DuplicateKeyError(
                            None,
                            None,
                            f"key {key_node.value if isinstance(key_node.value, str) else key!r} is given twice in one "
                            f"mapping (first at line {seen.line + 1}, column {seen.column + 1}); "
                            "YAML would keep only the last: merge the two, or remove one",
                            key_node.start_mark,
                        )
                    )
                    continue
                first[key] = key_node.start_mark
        super().flatten_mapping(node)


_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str, source: str = "<text>") -> Any:
    """The one document in ``text`` as Python values (None when empty).

    ``source`` names the text in error marks (a file name). Raises ``DuplicateKeyError`` for a
    key given twice in one mapping (the first such key; ``duplicates`` holds them all), and
    ``yaml.YAMLError`` for anything else YAML refuses; both carry ``problem_mark`` (0-based
    line and column)."""
    stream = io.StringIO(text)
    stream.name = source  # what marks call the text
    loader = _Loader(stream)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        document = loader.construct_document(root)
        duplicates = sorted(loader.__dict__.get("_duplicates", ()), key=lambda e: e.problem_mark.index)
        if duplicates:
            where = _locate(root, {exc.problem_mark.index for exc in duplicates})  # one walk for all
            for exc in duplicates:
                exc.path, exc.entry_id = where.get(exc.problem_mark.index, ((), None))
            duplicates[0].duplicates = tuple(duplicates)
            raise duplicates[0]
        return document
    finally:
        loader.dispose()


def _locate(root: Node, marks: set[int]) -> dict[int, tuple[tuple[str | int, ...], str | None]]:
    """For each key node starting at one of ``marks`` (stream indexes): the path to it, and
    the id of the outermost list entry on the way."""
    found: dict[int, tuple[tuple[str | int, ...], str | None]] = {}
    stack: list[tuple[Node, tuple[str | int, ...], str | None]] = [(root, (), None)]
    seen: set[int] = set()
    while stack and len(found) < len(marks):
        node, path, entry_id = stack.pop()
        if id(node) in seen:  # aliases may share nodes
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                label: str | int = key_node.value if isinstance(key_node, ScalarNode) else "?"
                if key_node.start_mark.index in marks and key_node.start_mark.index not in found:
                    found[key_node.start_mark.index] = ((*path, label), entry_id)
                stack.append((value_node, (*path, label), entry_id))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                item_id = entry_id
                if item_id is None and isinstance(item, MappingNode):
                    item_id = next(
                        (
                            v.value
                            for k, v in item.value
                            if isinstance(k, ScalarNode) and k.value == "id" and isinstance(v, ScalarNode)
                        ),
                        None,
                    )
                stack.append((item, (*path, i), item_id))
    return found


def describe(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``line L, column C: what is wrong`` (1-based); every
    duplicate key of the document, separated by "; "."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, DuplicateKeyError):
        return "; ".join(  # every one, so that one edit fixes them all
            f"line {each.problem_mark.line + 1}, column {each.problem_mark.column + 1}: {each.problem}"
            if each.problem_mark
            else str(each.problem)
            for each in exc.duplicates or (exc,)
        )
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML: {problem}"
