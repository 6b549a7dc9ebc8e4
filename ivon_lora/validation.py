"""The one form of a validation message, and the bounds and choices of a config field, written once in its metadata.

Every message that refuses a value has torch.optim's form ("Invalid lr value: -1.0"), followed by what a valid value
is: `Invalid lora_rank value: 0 (must be >= 1)` (`invalid_value`). The numbers a dataclass field accepts are its
metadata's `"bounds": Bounds(...)`, the names it accepts its `"choices"`; `check_fields` checks a config against
them in its `__post_init__`, and the command's flags and --help (`ivon_lora.commands._options`), `--help-keys` and
the generated reference pages (`docs/reference_pages.py`) state them from the same metadata (`requirement`).

A leaf (it imports nothing from the package): the recipe's and the commands' configs (`ivon_lora.config`) and the
training arguments (`ivon_lora.trainer.config`) all read it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


def invalid_value(name: str, value, requirement: str) -> str:
    """The message refusing `value` for `name`: "Invalid <name> value: <value!r> (must be <requirement>)"."""
    return f"Invalid {name} value: {value!r} (must be {requirement})"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


@dataclass(frozen=True)
class Bounds:
    """The interval a number must lie in; an infinite end means no bound on that side (never that inf is allowed:
    a value in bounds is finite)."""

    low: float = -math.inf
    high: float = math.inf
    low_inclusive: bool = True
    high_inclusive: bool = True

    def __contains__(self, value) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low <= value if self.low_inclusive else self.low < value
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>=' if self.low_inclusive else '>'} {_number(self.low)}"
        if self.low == -math.inf:
            return f"{'<=' if self.high_inclusive else '<'} {_number(self.high)}"
        return (f"in {'[' if self.low_inclusive else '('}{_number(self.low)}, {_number(self.high)}"
                f"{']' if self.high_inclusive else ')'}")  # fmt: skip

    def requirement(self, value) -> str:
        """What the message says a valid value is: a number in these bounds (finite, where the value is not)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"a number {self}"
        return f"{self}" if math.isfinite(value) else f"a finite number {self}"


# The bounds fields share.
UNIT_INTERVAL = Bounds(0.0, 1.0)
POSITIVE = Bounds(0.0, low_inclusive=False)
NON_NEGATIVE = Bounds(0)
AT_LEAST_ONE = Bounds(1)


def one_of(choices) -> str:
    return "one of " + ", ".join(map(str, choices))


def requirement(field: dataclasses.Field) -> str | None:
    """What `field`'s metadata asks of a value ("in [0, 1]", "one of a, b"), or None if nothing."""
    if "bounds" in field.metadata:
        return str(field.metadata["bounds"])
    if "choices" in field.metadata:
        return one_of(field.metadata["choices"])
    return None


def check_fields(config, names=None) -> None:
    """Refuse the first field of the dataclass `config` (of `names`, if given) whose value is outside its
    metadata's `bounds` or `choices`, with a ValueError naming it (`invalid_value`). None passes (an unset optional
    field); a list is checked item by item."""
    for field in dataclasses.fields(config):
        bounds, choices = field.metadata.get("bounds"), field.metadata.get("choices")
        if (bounds is None and choices is None) or (names is not None and field.name not in names):
            continue
        value = getattr(config, field.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None:
                continue
            if bounds is not None and (
                isinstance(item, bool) or not isinstance(item, (int, float)) or item not in bounds
            ):
                raise ValueError(invalid_value(field.name, item, bounds.requirement(item)))
            if choices is not None and item not in choices:
                raise ValueError(invalid_value(field.name, item, one_of(choices)))
