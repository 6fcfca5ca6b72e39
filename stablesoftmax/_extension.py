"""Finding the C++ extension when Python imports the package from a source checkout.

``pip install . && python -m stablesoftmax bench`` run in the clone imports ``./stablesoftmax``
(the current directory comes first on ``sys.path``), which holds no built ``_C``, instead of the
installed copy that does. When the installed copy is the same version, its extension is used (its
directory is appended to the package's ``__path__``, so ``stablesoftmax._C`` resolves there) and
:data:`stablesoftmax.EXTENSION_NOTE` says so; otherwise the note says what happened and what to type.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import sys

__all__ = ["extension_files", "installed_copies", "use_installed_extension"]

_VERSION = re.compile(r'^__version__ = "([^"]+)"', re.MULTILINE)


def extension_files(directory: str) -> list[str]:
    """The built ``_C`` extension modules in a package directory."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(n for n in names if n.startswith("_C.") and n.endswith(suffixes))


def _version(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, "__init__.py"), encoding="utf-8") as f:
            found = _VERSION.search(f.read())
    except OSError:
        return None
    return found.group(1) if found else None


def _findable() -> bool:
    """Whether the import system finds ``stablesoftmax._C`` as things stand (editable installs use their own finder)."""
    try:
        return importlib.util.find_spec(f"{__package__}._C") is not None
    except (ImportError, ValueError):
        return False


def installed_copies(here: str, search_path: list[str]) -> list[tuple[str, str | None]]:
    """Other ``stablesoftmax`` directories on ``search_path`` holding a built extension, with their versions."""
    found = []
    for entry in search_path:
        candidate = os.path.join(entry or os.getcwd(), "stablesoftmax")
        if not os.path.isdir(candidate) or os.path.realpath(candidate) == os.path.realpath(here):
            continue
        if extension_files(candidate):
            found.append((candidate, _version(candidate)))
    return found


def use_installed_extension(
    package_path: list[str], search_path: list[str] | None = None, findable: bool | None = None
) -> str | None:
    """Make ``stablesoftmax._C`` importable from an installed copy when the imported package has none.

    Returns None when nothing was needed (the package has its own build, or no other copy has one),
    else a one-line note for ``info`` and ``bench``. ``search_path`` defaults to ``sys.path``;
    ``findable`` (whether ``_C`` imports as things stand) is looked up when not given.
    """
    here = package_path[0]
    if _findable() if findable is None else findable:
        return None
    copies = installed_copies(here, sys.path if search_path is None else search_path)
    if not copies:
        return None
    ours = _version(here)
    for directory, version in copies:
        if version == ours:
            package_path.append(directory)
            return (
                f"the package was imported from {here} (a source tree without a built C++ extension); "
                f"using the extension of the installed copy {directory} (same version {ours})"
            )
    directory, version = copies[0]
    return (
        f"the package was imported from {here} (a source tree without a built C++ extension), not from the "
        f"installed copy {directory} (version {version}, ours {ours}), so the C++ backend is off. Run from another "
        "directory (cd /tmp && python -m stablesoftmax ...), or build in place: pip install -e ."
    )


def _leave_openmp_in_forked_child() -> None:
    """``os.register_at_fork`` child hook. torch's OpenMP runtime is unusable in a child forked after the parent ran
    OpenMP teams (libgomp hangs there), so the extension must run its threads on its own pool in the child. Its own
    ``pthread_atfork`` handler covers children of a process that had imported it; for a child whose parent had not
    (it used torch, then forked, before any stablesoftmax call), the extension is imported now and told."""
    if f"{__package__}._C" in sys.modules:
        return
    try:
        from . import _C
    except ImportError:
        return
    _C.mark_forked_child()


def register_fork_hook() -> None:
    """Install :func:`_leave_openmp_in_forked_child` (once, at the package's import; not on Windows)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_leave_openmp_in_forked_child)
