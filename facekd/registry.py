"""A small name -> factory registry, used instead of if/elif chains.

Models, losses, datasets, verification sets and CLI commands are all built from a
name in a config file.  Each family owns one :class:`Registry`; implementations add
themselves with the :meth:`Registry.register` decorator and callers build them with
:meth:`Registry.build`.

Example::

    MODELS = Registry("model")

    @MODELS.register("mobilefacenet")
    def mobilefacenet(embedding_size=512): ...

    net = MODELS.build("mobilefacenet", embedding_size=128)
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterator, Optional


class Registry:
    """Maps names to factories (classes or functions) of one family.

    ``check(name, factory)``, when given, runs at registration and raises for a factory that
    does not fulfil the family's contract (e.g. a loss that does not declare what it reads).
    """

    def __init__(self, family: str, check: Optional[Callable[[str, Callable[..., Any]], None]] = None) -> None:
        self.family = family
        self.check = check
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: Optional[str] = None) -> Callable[[Callable], Callable]:
        """Decorator adding a factory under ``name`` (default: its ``__name__``)."""

        def add(factory: Callable) -> Callable:
            key = name or factory.__name__
            if key in self._entries:
                raise KeyError(f"{self.family} {key!r} is registered twice")
            if self.check is not None:
                self.check(key, factory)
            self._entries[key] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered under ``name``; the error lists the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.family} {name!r}; known: {known}") from None

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the factory ``name`` with ``kwargs``.

        An argument the factory does not take is reported by name, so a typo in a
        config file fails loudly instead of being silently ignored.
        """
        self.check_arguments(name, kwargs)
        return self.get(name)(**kwargs)

    def check_arguments(self, name: str, kwargs: Dict[str, Any]) -> None:
        """Raise ``TypeError`` naming the arguments in ``kwargs`` that factory ``name`` does not take
        (what :meth:`build` checks first; also usable before the inputs of the build exist)."""
        params = inspect.signature(self.get(name)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not takes_any:
            unknown = sorted(set(kwargs) - set(params))
            if unknown:
                raise TypeError(f"{self.family} {name!r} takes no argument(s) {unknown}; "
                                f"it takes {sorted(params)}")

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {sorted(self._entries)})"
