"""Energy cost profiles: JSON data files of per-operation energies, each constant with its
value, unit, basis and source.

The shipped profiles live in ``sbsnn/analysis/profiles/`` (``horowitz45``, ``loihi2018``,
``truenorth2014``); :func:`load_profile` reads one of them by name or any JSON file by path
and refuses a file where a constant lacks its value, unit, basis (measured, simulated,
derived or all-in) or source. :mod:`sbsnn.analysis.energy` prices operation counts with
them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sbsnn.checks import check_input_file
from sbsnn.errors import InputError

__all__ = ["BASES", "Constant", "EnergyProfile", "ProfileError", "list_profiles", "load_profile",
           "profile_from_dict"]

BASES = ("measured", "simulated", "derived", "all-in")
_PROFILE_DIR = "profiles"


class ProfileError(InputError):
    """A cost profile is malformed, missing, or lacks a constant an estimate needs."""


@dataclass(frozen=True)
class Constant:
    key: str
    value: float
    unit: str
    basis: str
    source: str
    note: str | None = None
    range: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        d = {"value": self.value, "unit": self.unit, "basis": self.basis, "source": self.source}
        if self.note is not None:
            d["note"] = self.note
        if self.range is not None:
            d["range"] = list(self.range)
        return d


@dataclass
class EnergyProfile:
    name: str
    description: str
    source: dict
    constants: dict[str, Constant]
    all_in: bool = False
    path: str | None = None

    @property
    def kind(self) -> str:
        """``"all_in"``, ``"per_op"`` (has ``synaptic_op``) or ``"arithmetic"``."""
        if self.all_in:
            return "all_in"
        if "synaptic_op" in self.constants:
            return "per_op"
        return "arithmetic"

    def has(self, key: str) -> bool:
        return key in self.constants

    def value(self, key: str) -> float:
        try:
            return self.constants[key].value
        except KeyError:
            raise ProfileError(
                f"profile {self.name!r} ({self.path or 'in memory'}) has no constant {key!r}; "
                f"it defines {', '.join(sorted(self.constants))}") from None

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "all_in": self.all_in,
                "constants": {k: c.to_dict() for k, c in self.constants.items()}}


def _packaged_dir():
    return resources.files("sbsnn.analysis").joinpath(_PROFILE_DIR)


def list_profiles() -> list[str]:
    """Names of the profiles shipped with sbsnn."""
    return sorted(p.name[:-5] for p in _packaged_dir().iterdir() if p.name.endswith(".json"))


def profile_from_dict(d: Any, origin: str = "<dict>") -> EnergyProfile:
    """Validate a profile's JSON object; errors name ``origin`` and the offending key."""
    def bad(msg: str) -> ProfileError:
        return ProfileError(f"{origin}: {msg}")

    if not isinstance(d, dict):
        raise bad("a profile must be a JSON object")
    for key, typ in (("name", str), ("description", str), ("source", dict),
                     ("constants", dict), ("all_in", bool)):
        if key not in d:
            raise bad(f"missing top-level key {key!r} (a profile needs name, description, "
                      "source, constants, all_in)")
        if not isinstance(d[key], typ):
            raise bad(f"top-level key {key!r} must be a {typ.__name__}, got {type(d[key]).__name__}")
    if not d["constants"]:
        raise bad("'constants' is empty")
    constants = {}
    for key, c in d["constants"].items():
        where = f"constant {key!r}"
        if not isinstance(c, dict):
            raise bad(f"{where} must be an object with value, unit, basis and source")
        for field_ in ("value", "unit", "basis", "source"):
            if field_ not in c:
                raise bad(f"{where} lacks {field_!r} (every constant needs value, unit, basis, source)")
        v = c["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise bad(f"{where}: 'value' must be a finite non-negative number, got {v!r}")
        for field_ in ("unit", "source"):
            if not isinstance(c[field_], str) or not c[field_].strip():
                raise bad(f"{where}: {field_!r} must be a non-empty string")
        if c["basis"] not in BASES:
            raise bad(f"{where}: 'basis' must be one of {', '.join(BASES)}, got {c['basis']!r}")
        rng = c.get("range")
        if rng is not None:
            if (not isinstance(rng, list) or len(rng) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rng)
                    or not rng[0] <= v <= rng[1]):
                raise bad(f"{where}: 'range' must be [min, max] around the value, got {rng!r}")
            rng = (float(rng[0]), float(rng[1]))
        note = c.get("note")
        if note is not None and not isinstance(note, str):
            raise bad(f"{where}: 'note' must be a string")
        constants[key] = Constant(key, float(v), c["unit"], c["basis"], c["source"], note, rng)
    return EnergyProfile(d["name"], d["description"], d["source"], constants, d["all_in"],
                         None if origin == "<dict>" else origin)


def load_profile(name_or_path: "str | Path | EnergyProfile") -> EnergyProfile:
    """A shipped profile by name (``horowitz45``, ``loihi2018``, ``truenorth2014``) or a
    JSON file by path; validated (every constant has value, unit, basis and source)."""
    if isinstance(name_or_path, EnergyProfile):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in list_profiles():
        res = _packaged_dir().joinpath(f"{name_or_path}.json")
        origin, text = str(res), res.read_text(encoding="utf-8")
    else:
        p = Path(name_or_path)
        if not p.exists():
            raise ProfileError(f"{p}: no such profile file, and not a shipped profile name "
                               f"({', '.join(list_profiles())})")
        check_input_file(p, "the energy profile", error=ProfileError)
        origin, text = str(p), p.read_text(encoding="utf-8")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"{origin}: not valid JSON ({e})") from None
    return profile_from_dict(d, origin)
