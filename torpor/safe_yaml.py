"""The one way torpor reads YAML (specs, provisioning policies, the server config): safe and bounded.

``yaml.safe_load`` builds no objects but will happily let a small file stand for a huge document
through aliases (a "billion laughs" file of 1 KB is 10^9 strings once serialised). Here a file over
:data:`MAX_YAML_BYTES` is refused unread, more than :data:`MAX_ALIASES` aliases are refused while
parsing, and so is a document whose aliases expand to more than :data:`MAX_EXPANDED_NODES` nodes.
Every refusal is a :class:`YamlTooLarge`, a ``yaml.YAMLError``, so callers report it like any
other YAML problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from torpor.errors import SpecError

MAX_YAML_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 100_000


class YamlTooLarge(yaml.YAMLError):
    """A YAML file or document beyond torpor's bounds."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlTooLarge(f"more than {MAX_ALIASES} aliases (*name); torpor refuses it")
        return super().compose_node(parent, index)  # type: ignore[no-any-return]

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expanded(node)
        return node  # type: ignore[no-any-return]


def _check_expanded(root: yaml.Node) -> None:
    """Count the nodes the document stands for once aliases are expanded (shared nodes counted
    once per use), memoised per node so the count itself stays cheap."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += size(key) + size(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
        if total > MAX_EXPANDED_NODES:
            raise YamlTooLarge(f"its aliases expand to more than {MAX_EXPANDED_NODES} nodes; "
                               "torpor refuses it")
        sizes[id(node)] = total
        return total

    size(root)


def load_yaml(text: str) -> Any:
    """Parse one YAML document within torpor's bounds."""
    if len(text) > MAX_YAML_BYTES:
        raise YamlTooLarge(f"larger than {MAX_YAML_BYTES} bytes; torpor refuses it")
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except RecursionError:
        raise YamlTooLarge("nested too deeply; torpor refuses it") from None


def read_yaml(path: Path) -> Any:
    """Read and parse a YAML file; a file over the size bound is refused before it is read.

    Raises ``OSError`` when it cannot be read, ``UnicodeDecodeError`` when it is not UTF-8 and
    ``yaml.YAMLError`` (:class:`YamlTooLarge` included) when it is not acceptable YAML.
    """
    if path.is_file() and path.stat().st_size > MAX_YAML_BYTES:
        raise YamlTooLarge(f"larger than {MAX_YAML_BYTES} bytes; torpor refuses it")
    return load_yaml(path.read_text(encoding="utf-8"))


def read_config_mapping(path: Path) -> dict[str, Any]:
    """A server config file's top-level mapping ({} for an empty file); every problem is a
    :class:`~torpor.errors.SpecError` naming the file."""
    source = str(path)
    try:
        raw = read_yaml(path)  # bounded: size, aliases, depth
    except FileNotFoundError:
        raise SpecError(source, ["file not found"]) from None
    except IsADirectoryError:
        raise SpecError(source, ["is a directory, not a config file"]) from None
    except UnicodeDecodeError:
        raise SpecError(source, ["not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"not valid YAML: {exc}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(source, ["(top level): must be a mapping of sections"])
    return raw
