"""Run a callback right after a given module is imported, without importing it first.

The runner must patch ``getpass.getpass`` and fill ``linecache`` with the sources of user
code, but importing either at start-up would cost milliseconds that most sessions never
need. A finder at the front of ``sys.meta_path`` lets the normal finders locate the module
and wraps its loader, so the callback runs as soon as the module has executed -- before
``from getpass import getpass`` in user code can take the unpatched function.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any


class _Loader:
    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name: str) -> Any:
        # get_source, is_package, ...: whatever else importlib or inspect ask the loader.
        return getattr(self._loader, name)


class AfterImport:
    """A ``sys.meta_path`` finder that calls ``callbacks[name](module)`` after import."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]]) -> None:
        self._callbacks = callbacks

    def install(self) -> None:
        for name, callback in self._callbacks.items():
            module = sys.modules.get(name)
            if module is not None:
                callback(module)
        sys.meta_path.insert(0, self)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        callback = self._callbacks.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, callback)  # type: ignore[assignment,unused-ignore]
        return spec  # type: ignore[no-any-return]
