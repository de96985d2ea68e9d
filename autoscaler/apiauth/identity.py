"""Who a request is from, once authenticated (Kubernetes' user.Info)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()  # sorted (key, values): hashable

    @staticmethod
    def make(name: str, groups=(), uid: str = "", extra: dict[str, list[str]] | None = None) -> UserInfo:
        pairs = tuple(sorted((k, tuple(v)) for k, v in (extra or {}).items()))
        return UserInfo(name, tuple(groups), uid or "", pairs)

    def extra_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.extra}
