"""Read-only, dict-style access to the frozen dataclasses of the configuration: they read,
and compare equal, like the JSON they are saved as."""

from __future__ import annotations

import dataclasses
from typing import Any


class ReadsLikeDict:
    """config.json-style, read-only access to a dataclass: `x["field"]`, `in`, `keys()`,
    `items()`, iteration over the field names."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def __eq__(self, other: object) -> bool:
        """Equal to a dict or dataclass of the same fields and values (config.json's)."""
        if not isinstance(other, (dict, ReadsLikeDict)):
            return NotImplemented
        return plain(self) == plain(other)

    __hash__ = None  # type: ignore[assignment]


def plain(value: Any) -> Any:
    """`value` with every dataclass in it as a dict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
