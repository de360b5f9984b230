"""Stage settings: one frozen dataclass per stage holds every default, the values each setting takes and its
checks, in one place.

The command line reads its defaults and choices from there (``scripts/cli.py``)
and the library checks a stage's settings once, when they are made: a bad
value is a :class:`~pipeline.errors.UserError` naming the field, which the
command line shows as its flag. Settings modules import nothing heavy, so
``--help`` starts fast.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from .errors import UserError

Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it, or None


def setting(default: Any = dataclasses.MISSING, *, choices: tuple | Callable[[], tuple] | None = None,
            check: Check | None = None) -> Any:
    """A field of a stage's settings: its ``default``, the values it takes (``choices``, for each element of a
    tuple or list; a function giving them when they come from a registry) and ``check``. None is always allowed where it
    is the default."""
    return dataclasses.field(default=default, metadata={"choices": choices, "check": check})


def same_as(settings: type, name: str) -> Any:
    """A field that takes what the field ``name`` of another stage's ``settings`` takes (its default, choices
    and check), for a stage that passes it on: each default is written once, where it is used."""
    f = settings.field(name)
    return dataclasses.field(default=f.default, metadata=f.metadata)


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low}, not {v}"


def within(low: float, high: float) -> Check:
    """From ``low`` to ``high``, both included: a bound that keeps a typo from allocating the machine away."""
    return lambda v: None if low <= v <= high else f"must be from {low:,} to {high:,}, not {v:,}"


MAX_BATCH = 4096  # images per forward pass: more would allocate gigabytes before the first image
MAX_JOBS = 1024  # parallel processes
SEEDS = (0, 2**32 - 1)  # what every random generator the stages seed takes (numpy's legacy and scikit-learn's)


def seed_setting() -> Any:
    """The ``seed`` field of every stage's settings, checked the same way everywhere."""
    return setting(0, check=within(*SEEDS))


def positive(v: float) -> str | None:
    return None if 0 < v < math.inf else f"must be positive and finite, not {v}"


MAX_EPOCHS = 10_000
IMAGE_SIZES = (32, 2048)  # a network's input side: smaller vanishes in its downsampling, larger exhausts memory


def epoch_pair(v) -> str | None:
    """Full mode's two phases: a number of epochs each."""
    if len(v) != 2 or not all(0 <= e <= MAX_EPOCHS for e in v):
        return f"must be two numbers of epochs from 0 to {MAX_EPOCHS:,}, not {' '.join(map(str, v))}"
    return None


def between(low: float, high: float) -> Check:
    """Strictly between ``low`` and ``high``: a fraction of a set, for example."""
    return lambda v: None if low < v < high else f"must be between {low:g} and {high:g}, not {v}"


def is_probability(value) -> bool:
    """A finite number from 0 to 1 (what files hold as thresholds: checked where they are read)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0 <= value <= 1


def share(v: float) -> str | None:
    """A share of images that may be nothing but not all: [0, 1)."""
    return None if 0 <= v < 1 else f"must be at least 0 and under 1, not {v}"


class Settings:
    """The base of the stages' settings: checked when made (and when ``dataclasses.replace`` makes another)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            choices = self.choices(f.name)
            for item in (value if isinstance(value, (tuple, list)) else (value,)) if choices is not None else ():
                if item not in choices:
                    raise UserError(f"must be one of {', '.join(map(str, choices))}, not {item!r}", param=f.name)
            check = f.metadata.get("check")
            problem = check(value) if check is not None else None
            if problem:
                raise UserError(problem, param=f.name)
        self.check()

    def check(self) -> None:
        """Checks across fields, after each field's own; raise a :class:`UserError` naming the field at fault."""

    @classmethod
    def field(cls, name: str) -> dataclasses.Field:
        return next(f for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def default(cls, name: str) -> Any:
        f = cls.field(name)
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    @classmethod
    def choices(cls, name: str) -> tuple | None:
        choices = cls.field(name).metadata.get("choices")
        return choices() if callable(choices) else choices
