"""Comparing a desired object with the one the apiserver returns (pure: no I/O).

Used by ``kube.Kube.apply`` to skip a request when nothing we manage changed, and by ``resources.pods`` to tell
whether a pod runs the current pod template. Both must tolerate what the apiserver adds (defaults such as
``fieldRef.apiVersion``, other managers' fields) and its canonical form of quantities.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["first_difference", "is_subset", "quantity_value"]

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}  # fmt: skip


def quantity_value(value: Any) -> Decimal | None:
    """The value of a Kubernetes quantity (``2``, ``"500m"``, ``"1Gi"``), or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    m = _QUANTITY.match(str(value))
    return Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""] if m else None


def is_subset(desired: Any, observed: Any) -> bool:
    """Whether ``observed`` already carries every value of ``desired``.

    Maps may have extra keys in ``observed`` (server defaults, other managers' fields); lists must have
    the same length and match item by item (so a removed or reordered item counts as drift); scalars
    must be equal — quantities by value, since the apiserver stores them in canonical form (``2`` comes
    back as ``"2"``, ``"0.5"`` as ``"500m"``, ``"1024Mi"`` as ``"1Gi"``).
    """
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(
            k in observed and is_subset(v, observed[k]) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(desired) == len(observed)
            and all(is_subset(d, o) for d, o in zip(desired, observed, strict=True))
        )
    if desired == observed:
        return True
    value = quantity_value(desired)
    return value is not None and value == quantity_value(observed)


def first_difference(desired: Any, observed: Any, path: str = "") -> str | None:
    """Where ``observed`` departs from ``desired`` (for logs), or None when ``is_subset`` holds."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return f"{path or '.'}: not a map"
        for k, v in desired.items():
            if k not in observed:
                return f"{path}.{k}: missing"
            found = first_difference(v, observed[k], f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(desired) != len(observed):
            return f"{path}: list differs in length"
        for i, (d, o) in enumerate(zip(desired, observed, strict=True)):
            found = first_difference(d, o, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if is_subset(desired, observed) else f"{path}: {observed!r} != {desired!r}"
