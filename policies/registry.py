"""Policy registry: built-ins plus third-party policies from the `qscale.policies` entry points.

    from policies import registry
    registry.names()                       # ['hpa', 'hybrid', 'keda', 'kpa', 'static', ...]
    policy = registry.create("hpa", target_value=8)

A third-party package registers a `Policy` subclass in its pyproject::

    [project.entry-points."qscale.policies"]
    mypolicy = "mypkg.policy:MyPolicy"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from policies.base import Policy, PolicyParams
from policies.errors import UserError

ENTRY_POINT_GROUP = "qscale.policies"


class PolicyConfigError(UserError, ValueError):
    """Unknown policy name or invalid parameters; the message is one line naming the field."""


class PolicyRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Policy]] = {}
        self._entry_points_loaded = False

    def register(self, cls: type[Policy]) -> type[Policy]:
        """Register a policy class under `cls.name` (usable as a decorator)."""
        if not cls.name:
            raise ValueError(f"{cls.__qualname__} has no `name`")
        existing = self._classes.get(cls.name)
        if existing is not None and existing is not cls:
            raise ValueError(f"policy name {cls.name!r} is already taken by {existing.__qualname__}")
        self._classes[cls.name] = cls
        return cls

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._classes:
                continue  # built-ins win; a plugin cannot shadow them
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plugin must not break the built-ins
                raise PolicyConfigError(
                    f"policy plugin {ep.name!r} ({ep.value}) failed to load: {exc}"
                ) from exc
            if not (isinstance(cls, type) and issubclass(cls, Policy)):
                raise PolicyConfigError(
                    f"policy plugin {ep.name!r} ({ep.value}) is not a qscale Policy subclass"
                )
            self._classes[ep.name] = cls

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._classes)

    def get(self, name: str) -> type[Policy]:
        self._load_entry_points()
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes))
            raise PolicyConfigError(f"unknown policy {name!r} (known: {known})") from None

    def params(self, name: str, **params: Any) -> PolicyParams:
        """Validate parameters for policy `name`; errors name the field in one line."""
        cls = self.get(name)
        try:
            return cls.Params(**params)
        except ValidationError as exc:
            raise PolicyConfigError(f"{name}: {format_validation_error(exc)}") from None

    def create(self, name: str, **params: Any) -> Policy:
        return self.get(name)(self.params(name, **params))


def format_validation_error(exc: ValidationError) -> str:
    """One line: `field: message; other_field: message`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "parameters"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown parameter"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


registry = PolicyRegistry()
