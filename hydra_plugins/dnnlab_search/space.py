"""The search space of dnnlab's sweeper (`hydra.sweeper.params`, then the command line's sweep
overrides, which replace a key's entry), drawn define-by-run on an Optuna trial.

Each key takes one of:
- Hydra's sweep grammar, as a grid sweep writes it: `choice(0.5, 1, inf)` (categorical),
  `interval(0, 1)`, `tag(log, interval(1e-4, 1e-1))`, `range(1, 9, 2)` (integers);
- dnnlab's spec, a mapping `{low: .., high: .., log: true|false, int: false, or: [values]}`: a
  number in [low, high] (on a log scale with `log`), or one of the `or` values, a choice made
  first (Optuna parameter `<key>:branch`, "[low, high]" or the value). The pooling's
  temperature is `{low: 0.5, high: 32, log: true, or: [inf]}`: a continuous log beta, or max
  pooling. On the command line: `'model.pool.beta={low:1,high:64,log:true,or:[inf]}'`;
- anything else: a fixed override passed to every trial (`experiment=search`, `trainer.epochs=3`).

A trial's overrides are `key=value` strings; its `values` are the same, typed (for the report).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dnnlab.core.errors import ConfigError

SPEC_KEYS = {"low", "high", "log", "int", "or"}


def _text(x: Any) -> str:
    """A value as an override writes it (floats in full: 0.004430375245218269, inf)."""
    if isinstance(x, float):
        return "inf" if x == math.inf else "-inf" if x == -math.inf else repr(x)
    return str(x)


def typed(text: str) -> Any:
    """An override value back as a number where it is one ("4" -> 4, "inf" -> inf)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class Param:
    key: str  # the override's key, as written (`+foo` included)
    kind: str  # choice | float | int
    choices: tuple = ()  # choice: the values as override text
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int | None = None
    alternatives: tuple = ()  # spec `or`: values besides the interval (override text)

    def suggest(self, trial: Any) -> str:
        """This parameter's value for `trial` (Optuna, define-by-run), as override text."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.alternatives:
            interval = f"[{_text(self.low)}, {_text(self.high)}]"
            branch = trial.suggest_categorical(f"{self.key}:branch",
                                               [interval, *self.alternatives])
            if branch != interval:
                return branch
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high),
                                         step=self.step or 1, log=self.log))
        return _text(trial.suggest_float(self.key, self.low, self.high, log=self.log))


def _check_interval(where: str, low: Any, high: Any, log: bool) -> tuple[float, float]:
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: low={low!r}, high={high!r}: expected numbers") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{where}: low={_text(lo)}, high={_text(hi)}: expected finite bounds "
                          "(inf goes under `or`)")
    if lo >= hi:
        raise ConfigError(f"{where}: low={_text(lo)} >= high={_text(hi)}: expected low < high "
                          "(the values besides the interval go under `or`)")
    if not math.isfinite(hi - lo):
        raise ConfigError(f"{where}: low={_text(lo)}, high={_text(hi)}: the interval is wider "
                          "than a float holds")
    if log and lo <= 0:
        raise ConfigError(f"{where}: low={_text(lo)}: a log scale needs low > 0")
    return lo, hi


def _from_spec(key: str, spec: Mapping, where: str) -> Param:
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                          f"(a spec takes {', '.join(sorted(SPEC_KEYS))})")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a spec needs low and high")
    log, is_int = bool(spec.get("log", False)), bool(spec.get("int", False))
    lo, hi = _check_interval(where, spec["low"], spec["high"], log)
    alts = spec.get("or") or []
    alts = [alts] if isinstance(alts, (str, int, float)) else list(alts)
    return Param(key, "int" if is_int else "float", low=lo, high=hi, log=log,
                 alternatives=tuple(dict.fromkeys(_text(a) for a in alts)))


def _from_override(override: Any, where: str) -> Param | None:
    """A Param from a parsed Hydra sweep override; None for a plain (fixed) one."""
    from hydra.core.override_parser.types import Transformer

    if not override.is_sweep_override():
        return None
    key, value = override.get_key_element(), override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = tuple(dict.fromkeys(
            _text(x) for x in override.sweep_iterator(transformer=Transformer.encode)))
        if not choices:
            raise ConfigError(f"{where}: an empty choice")
        return Param(key, "choice", choices=choices)
    if override.is_range_sweep():
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            choices = tuple(_text(x) for x in override.sweep_iterator())
            if not choices:
                raise ConfigError(f"{where}: an empty range")
            return Param(key, "choice", choices=choices)
        if value.step <= 0 or value.stop - value.step < value.start:
            raise ConfigError(f"{where}: an empty range (expected start < stop, step > 0)")
        return Param(key, "int", low=value.start, high=value.stop - value.step,
                     step=int(value.step))
    log = "log" in value.tags
    lo, hi = _check_interval(where, value.start, value.end, log)
    both_int = isinstance(value.start, int) and isinstance(value.end, int)
    return Param(key, "int" if both_int else "float", low=lo, high=hi, log=log)


@dataclass
class Space:
    params: list[Param]  # drawn in this order
    fixed: list[str]  # overrides every trial gets, as written

    @classmethod
    def parse(cls, params: Mapping | None, arguments: list[str]) -> Space:
        """The space of `hydra.sweeper.params` and the command line `arguments` (a key's later
        entry replaces its earlier one); ConfigError naming the key, or the empty space."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        entries: dict[str, Param | str] = {}
        for key, value in (params or {}).items():
            where = f"hydra.sweeper.params.{key}"
            if isinstance(value, Mapping):
                entries[str(key)] = _from_spec(str(key), value, where)
                continue
            text = f"{key}={_text(value) if not isinstance(value, str) else value}"
            (ov,) = parser.parse_overrides([text])
            entries[ov.get_key_element()] = _from_override(ov, where) or text
        for ov in parser.parse_overrides(list(arguments)):
            value = None if ov.is_sweep_override() else ov.value()
            if isinstance(value, dict) and {"low", "high"} <= set(value):  # a spec, typed inline
                entries[ov.get_key_element()] = _from_spec(ov.get_key_element(), value,
                                                           ov.input_line)
                continue
            entries[ov.get_key_element()] = _from_override(ov, ov.input_line) or ov.input_line
        space = cls([p for p in entries.values() if isinstance(p, Param)],
                     [p for p in entries.values() if isinstance(p, str)])
        if not space.params:
            raise ConfigError("hydra.sweeper.params: the search space is empty (give a key a "
                              "choice(...), an interval(...) or a {low, high} spec)")
        return space

    def suggest(self, trial: Any) -> list[str]:
        """The overrides of `trial`: its drawn parameters, then the fixed ones."""
        return [f"{p.key}={p.suggest(trial)}" for p in self.params] + self.fixed
