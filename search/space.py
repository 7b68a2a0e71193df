"""A search space over train.py's CONFIG keys: read from a small YAML file (or a dict), checked before any training.

One line per key::

    learning_rate: {low: 1e-4, high: 3e-3, log: true}   # a range: float or int by the type of CONFIG's default
    time_mask: {low: 0, high: 40, step: 4}               # int default -> integers 0, 4, ..., 40
    mixup_alpha: {low: 0.0, high: 0.5}
    arch: [resnet18, resnet34]                           # a list: categorical

A range takes ``low`` and ``high`` (inclusive), optionally ``log: true`` (sampled uniformly in log space, low > 0)
or ``step`` (not both, as in Optuna's ``suggest_float``/``suggest_int``). Values are parsed with the type of the
key's CONFIG default, as ``--key=value`` is (so YAML's ``1e-4``, a string to YAML 1.1, is the float 1e-4).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from experiment.config import ConfigError, parse_value

RANGE_FIELDS = ("low", "high", "log", "step")


class SpaceError(ConfigError):
    """A search space that cannot be searched; the message names the key and the fix."""


@dataclass(frozen=True)
class Param:
    """One searched key. ``kind``: categorical (``choices``), float or int (``low``..``high`` inclusive,
    ``log`` scale or a ``step``)."""
    key: str
    kind: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def suggest(self, trial):
        """This key's value for an Optuna ``trial`` (suggest_categorical / suggest_float / suggest_int)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list:
        """The values a grid visits: the choices, or every step of the range. Raises SpaceError for a float range
        without ``step`` (a continuum has no grid)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise SpaceError(f"search space, {self.key}: the grid sampler needs a list or a range with a step; "
                             f"give {self.key}: {{low: {self.low:g}, high: {self.high:g}, step: ...}} or a list")
        count = int(np.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [float(round(self.low + i * self.step, 12)) for i in range(count)]

    def contains(self, value) -> bool:
        """Whether ``value`` (e.g. the config's default) is one this parameter can take."""
        if self.kind == "categorical":
            return value in self.choices
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return abs(steps - round(steps)) < 1e-9

    def describe(self) -> str:
        """The line of the space file this parameter reads as (normalised), for records and comparisons."""
        if self.kind == "categorical":
            return f"{self.key}: [{', '.join(map(str, self.choices))}]"
        extra = (", log: true" if self.log else "") + (f", step: {self.step:g}" if self.step is not None else "")
        return f"{self.key}: {{low: {self.low:g}, high: {self.high:g}{extra}}} ({self.kind})"


@dataclass(frozen=True)
class SearchSpace:
    """The searched keys, in file order."""
    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def suggest(self, trial) -> dict:
        """{key: value} for an Optuna trial."""
        return {p.key: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list]:
        """{key: values} for optuna.samplers.GridSampler. Raises SpaceError for a float range without step."""
        return {p.key: p.values() for p in self.params}

    def outside(self, cfg: dict) -> list[str]:
        """The keys whose value in ``cfg`` the space cannot take, each with that value."""
        return [f"{p.key}={cfg[p.key]!r}" for p in self.params if not p.contains(cfg[p.key])]

    def describe(self) -> list[str]:
        return [p.describe() for p in self.params]


def load_space(source, config: dict, reserved: tuple[str, ...] = ()) -> SearchSpace:
    """Read and check a search space.

    Args:
        source: a YAML file path, or a dict {key: list | {low, high[, log][, step]}}.
        config: the CONFIG dict whose keys may be searched and whose defaults give each value's type.
        reserved: keys the caller sets itself (e.g. sweep.py's run names), which may not be searched.
    Returns:
        SearchSpace with one Param per key, in order.
    Raises:
        SpaceError: unreadable file, not a mapping, unknown or reserved key (with close matches), or a
        malformed entry: empty or repeated list, a range on a bool/str key, a field other than
        low/high/log/step, low > high, log with low <= 0, log together with step, step <= 0, a value of the
        wrong type (e.g. 0.5 for an int key). Each message names the key.
    """
    if not isinstance(source, dict):
        path = Path(source)
        try:
            source = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise SpaceError(f"search space {path}: cannot read it ({type(err).__name__}: {err})") from None
        if not isinstance(source, dict) or not source:
            raise SpaceError(f"search space {path}: expected one line per CONFIG key, such as "
                             "'learning_rate: {low: 1e-4, high: 1e-2, log: true}' or 'arch: [resnet18, resnet34]'")
    return SearchSpace(tuple(_param(str(key), spec, config, reserved) for key, spec in source.items()))


def _param(key: str, spec, config: dict, reserved: tuple[str, ...]) -> Param:
    if key not in config:
        close = difflib.get_close_matches(key, config, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SpaceError(f"search space: unknown config key {key!r}.{hint} Valid keys: {', '.join(sorted(config))}")
    if key in reserved:
        raise SpaceError(f"search space: {key} is set by the sweep itself and cannot be searched")
    default = config[key]
    if isinstance(spec, list):
        if not spec:
            raise SpaceError(f"search space, {key}: the list of choices is empty")
        choices = tuple(_value(key, v, default) for v in spec)
        if len(set(choices)) < len(choices):
            raise SpaceError(f"search space, {key}: a choice is listed twice in {spec}")
        return Param(key, "categorical", choices=choices)
    if not isinstance(spec, dict):
        raise SpaceError(f"search space, {key}: {spec!r} is neither a list of choices nor a range "
                         f"{{low: ..., high: ...}}; to fix a value, pass --{key}=VALUE on the command line instead")
    if isinstance(default, (bool, str)):
        raise SpaceError(f"search space, {key}: a range needs a numeric key, but {key} is "
                         f"{type(default).__name__} (default {default!r}); list the choices instead: {key}: [a, b]")
    unknown = sorted(set(spec) - set(RANGE_FIELDS))
    missing = [f for f in ("low", "high") if f not in spec]
    if unknown or missing:
        raise SpaceError(f"search space, {key}: a range has low and high (and optionally log or step); "
                         + (f"unknown field(s) {', '.join(map(str, unknown))}" if unknown else
                            f"missing {' and '.join(missing)}"))
    low, high = _value(key, spec["low"], default), _value(key, spec["high"], default)
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise SpaceError(f"search space, {key}: log must be true or false, got {log!r}")
    if low > high:
        raise SpaceError(f"search space, {key}: low {low!r} is above high {high!r}")
    if log and low <= 0:
        raise SpaceError(f"search space, {key}: a log range needs low > 0, got {low!r}")
    if step is not None:
        step = _value(key, step, default)
        if log:
            raise SpaceError(f"search space, {key}: log and step do not combine (Optuna samples one or the other)")
        if step <= 0:
            raise SpaceError(f"search space, {key}: step must be positive, got {step!r}")
    kind = "int" if isinstance(default, int) else "float"
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _value(key: str, value, default):
    """``value`` as the type of ``default`` (parse_value's rules); SpaceError naming the key otherwise."""
    if isinstance(value, (dict, list)) or value is None:
        raise SpaceError(f"search space, {key}: {value!r} is not a value of {key} ({type(default).__name__})")
    try:
        return parse_value(key, value if isinstance(value, str) else repr(value), default)
    except ConfigError as err:
        raise SpaceError(f"search space, {key}: {err}") from None
