"""Where an export writes: checks on `--out`, one writer at a time, stale partials, atomic replacement.

Rules (docs/export.md, "Output: no data loss, one writer, atomic replacement"):
- `--out` is written as `.NAME.partial-PID` beside it (with a marker file) and renamed into
  place at the end. A failure, SIGINT or SIGTERM removes the partial; a later export to
  the same `--out` removes partials (name pattern + marker) of processes that are gone.
- `--force` replaces only a shadow-edge artifact: a directory with our `manifest.json` and
  nothing the manifest does not list, which neither contains nor lies inside an input.
- One export per `--out` at a time: the writer holds `flock` on `.NAME.lock` beside it; a
  second export fails at once instead of both "succeeding".
- Replacement is atomic for readers: on Linux the new directory and the old one are
  exchanged in one `renameat2(RENAME_EXCHANGE)` under the old directory's exclusive lock,
  which `ShadowRuntime.load` respects (see `shadow_edge.artifact_lock`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from shadow_edge import artifact_lock
from shadow_edge.adapter_pack import PACK_FORMAT
from shadow_edge.errors import ExportError
from shadow_edge.manifest import FORMAT_NAME, MANIFEST_NAME

T = TypeVar("T")

PARTIAL_MARKER = ".shadow-edge-partial"  # inside each temporary export directory; holds the writer's pid
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def partial_path(out: Path, pid: int | None = None) -> Path:
    return out.parent / f".{out.name}.partial-{os.getpid() if pid is None else pid}"


def _partial_pattern(out: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(out.name)}\.partial-(\d+)(-old)?")


# ---- checks on --out ---------------------------------------------------------------------------

def _overlap(out: Path, inputs: dict[str, Path]) -> str | None:
    real = out.resolve()
    for role, path in inputs.items():
        other = Path(path).resolve()
        if real == other:
            return f"is the {role} input"
        if other in real.parents:
            return f"is inside the {role} input {path}"
        if real in other.parents:
            return f"contains the {role} input {path}"
    return None


# What `--force` may replace: directories whose manifest.json has one of these formats (artifacts and
# adapter packs for export; `shadow-edge web` passes its own).
ARTIFACT_FORMATS = (FORMAT_NAME, PACK_FORMAT)


def _not_an_artifact(out: Path, formats: tuple[str, ...] = ARTIFACT_FORMATS) -> str | None:
    """Why `out` is not a shadow-edge directory of `formats` we may replace, or None when it is one."""
    try:
        raw = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"it has no readable {MANIFEST_NAME}, so it is not a shadow-edge artifact"
    if not isinstance(raw, dict) or raw.get("format") not in formats or not isinstance(raw.get("files"), dict):
        return f"its {MANIFEST_NAME} is not a shadow-edge manifest of {' or '.join(formats)}"
    listed = set(raw["files"]) | {MANIFEST_NAME}
    listed_dirs = {p for name in listed for p in map(str, Path(name).parents) if p != "."}
    extra = []
    for root, dirs, files in os.walk(out):  # symlinks are not followed
        rel = Path(root).relative_to(out)
        extra += [(rel / f).as_posix() for f in files if (rel / f).as_posix() not in listed]
        keep = [d for d in dirs if (rel / d).as_posix() in listed_dirs and not os.path.islink(os.path.join(root, d))]
        extra += [(rel / d).as_posix() for d in dirs if d not in keep]
        dirs[:] = keep
    if extra:
        shown = ", ".join(sorted(extra)[:3]) + (f" (+{len(extra) - 3} more)" if len(extra) > 3 else "")
        return f"it holds files the artifact's manifest does not list ({shown})"
    return None


def check_out(out: Path, force: bool, inputs: dict[str, Path], formats: tuple[str, ...] = ARTIFACT_FORMATS) -> None:
    """Refuse an `--out` we must not write to or replace, before any work is done."""
    try:
        _check_out(out, force, inputs, formats)
    except OSError as e:  # e.g. a directory on the way we may not read
        raise ExportError(f"--out {out}: cannot inspect {e.filename or out} ({e.strerror}); choose an --out you may "
                          "read and write") from None


def _check_out(out: Path, force: bool, inputs: dict[str, Path], formats: tuple[str, ...]) -> None:
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ExportError(f"--out {out}: {parent} is a file, not a directory; choose an --out in a directory")
            break
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink():
        raise ExportError(f"--out {out}: is a symbolic link; pass the directory it points to ({out.resolve()}) "
                          "or another --out")
    if not out.is_dir():
        raise ExportError(f"--out {out}: is a file, not a directory; choose another --out")
    if not any(out.iterdir()):
        return  # an empty directory: nothing to lose
    problem = _overlap(out, inputs)
    if problem:
        raise ExportError(f"--out {out}: {problem}; an export never replaces a directory that is, contains or lies "
                          "inside its inputs; choose another --out")
    if not force:
        raise ExportError(f"--out {out}: already exists; choose another --out or pass --force to replace it")
    problem = _not_an_artifact(out, formats)
    if problem:
        what = "artifact" if formats == ARTIFACT_FORMATS else "output"
        raise ExportError(f"--out {out}: --force only replaces a shadow-edge {what}, and {problem}; move your "
                          "files away or choose another --out")


# ---- one writer per --out, stale partials ------------------------------------------------------

@contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `out` for the whole export; a second concurrent export fails at once."""
    lock = lock_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ExportError(f"--out {out}: cannot write in {out.parent} ({e.strerror}); choose an --out in a "
                          "directory you may write to") from None
    try:
        if artifact_lock.fcntl is not None:
            try:
                artifact_lock.try_flock(fd, artifact_lock.fcntl.LOCK_EX | artifact_lock.fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                raise ExportError(f"--out {out}: another export to it is running (pid {holder}, holding {lock}); "
                                  "wait for it to finish or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # only for the message above
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # we hold the writer lock: a partial with our pid is a leftover of an earlier process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove `.NAME.partial-PID` directories of dead processes (only ours: name pattern + marker)."""
    pattern, removed = _partial_pattern(out), []
    for path in out.parent.iterdir():
        m = pattern.fullmatch(path.name)
        if not m or path.is_symlink() or not path.is_dir():
            continue
        try:
            marker = (path / PARTIAL_MARKER).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        pid = int(m.group(1))
        if marker in ("", str(pid)) and not _pid_alive(pid):  # "": killed between creating and writing it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def new_partial(tmp: Path) -> None:
    """Create this process's temporary directory `tmp` (`partial_path(out)`), marked as ours."""
    tmp.mkdir()
    (tmp / PARTIAL_MARKER).write_text(f"{os.getpid()}\n", encoding="ascii")


def remove_partial(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def _free_bytes(out: Path) -> int | None:
    try:
        return shutil.disk_usage(out.parent).free
    except OSError:
        return None


def _space(needs: int | None, out: Path) -> str:
    """`needs about X GB, Y GB free there` (what is known of it), for errors about writing."""
    free = _free_bytes(out)
    parts = ([f"needs about {needs / 1e9:.2f} GB"] if needs else []) + \
        ([f"{free / 1e9:.2f} GB free there"] if free is not None else [])
    return f" ({', '.join(parts)})" if parts else ""


def write_partial_then_publish(out: Path, force: bool, inputs: dict[str, Path], write: Callable[[Path], T],
                               what: str = "artifact", needs: int | None = None,
                               formats: tuple[str, ...] = ARTIFACT_FORMATS) -> T:
    """Run `write(tmp)` into this process's partial directory, then publish it onto `out`; returns what
    `write` returned. Call under `signals_clean_up()` and `writer_lock(out)`. Any failure removes the partial.

    `needs`: about the bytes `write` puts on disk; less free space than that fails before anything is written,
    and an error while writing says both numbers.
    """
    tmp = partial_path(out)
    if tmp.exists() or tmp.is_symlink():  # not ours: clean_stale_partials removed ours
        raise ExportError(f"{tmp}: exists and is not a partial export of this tool; remove it or choose another "
                          "--out")
    free = _free_bytes(out)
    if needs and free is not None and needs > free:
        raise ExportError(f"{out.parent}: not enough free space for the {what}: it needs about {needs / 1e9:.2f} GB, "
                          f"{free / 1e9:.2f} GB are free; free some space or choose an --out on a larger disk")
    try:
        new_partial(tmp)  # inside the try: a signal right after it still cleans up
        result = write(tmp)
        reraise_received_signal()
        check_out(out, force, inputs, formats)  # nothing of the user's appeared there meanwhile
        publish(tmp, out)
    except OSError as e:
        remove_partial(tmp)
        raise ExportError(f"{e.filename or tmp}: cannot write the {what} ({e.strerror or e}){_space(needs, out)}; "
                          f"check the free space, file size limit (ulimit -f) and permissions where --out {out} "
                          "lives; nothing was left behind") from None
    except BaseException:
        remove_partial(tmp)
        raise
    return result


# ---- atomic replacement ------------------------------------------------------------------------

def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` onto `out`; an existing artifact there is replaced in one step."""
    (tmp / PARTIAL_MARKER).unlink()
    if not out.exists() or not any(out.iterdir()):
        os.replace(tmp, out)  # new, or an empty directory
        return
    with artifact_lock.exclusive(out), _signals_deferred():  # waits for readers loading the old artifact
        if _exchange(tmp, out):
            old = tmp
        else:  # no atomic exchange here: a reader may miss the directory for an instant
            old = tmp.with_name(tmp.name + "-old")
            os.rename(out, old)
            os.rename(tmp, out)
        (old / PARTIAL_MARKER).write_text(f"{os.getpid()}\n", encoding="ascii")  # a crash now leaves it cleanable
    remove_partial(old)


# ---- signals -----------------------------------------------------------------------------------

class _SignalState:
    installed = False
    deferring = False
    pending: int | None = None
    received: int | None = None  # the signal that ended this export, even if native code swallowed its exception
    ours: tuple[int, ...] = ()  # the signals whose handler is _handler now (they had their default disposition)


def _raise_for(signum: int) -> None:
    for s in _SignalState.ours:
        signal.signal(s, signal.SIG_IGN)  # cleanup runs once, undisturbed by a second signal
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _handler(signum, frame) -> None:
    _SignalState.received = signum
    if _SignalState.deferring:
        _SignalState.pending = signum
        return
    _raise_for(signum)


def reraise_received_signal() -> None:
    """End as the signal that arrived, if one did: native code (e.g. torch converting a mapped tensor) may have
    swallowed its exception or turned it into another error, or carried on."""
    if _SignalState.received is not None:
        _raise_for(_SignalState.received)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """A signal arriving inside is raised at the end, so a swap is never left half done."""
    _SignalState.deferring = _SignalState.installed
    try:
        yield
    finally:
        _SignalState.deferring = False
        signum, _SignalState.pending = _SignalState.pending, None
        if signum is not None:
            _raise_for(signum)


@contextmanager
def signals_clean_up() -> Iterator[None]:
    """While exporting, SIGTERM raises SystemExit(143) and SIGINT KeyboardInterrupt, so cleanup runs as on
    any error (and never in the middle of the final swap). Only the main thread can install handlers,
    and each signal is taken over only where it has its default disposition: a handler the application
    installed, or an ignored SIGINT (a job started in the background), is left as it is."""
    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    ours = tuple(s for s, d in defaults.items() if signal.getsignal(s) is d)
    if threading.current_thread() is not threading.main_thread() or not ours:
        yield
        return
    for s in ours:
        signal.signal(s, _handler)
    _SignalState.installed, _SignalState.received, _SignalState.ours = True, None, ours
    try:
        yield
    except BaseException:
        reraise_received_signal()  # whatever error native code made of the signal's exception
        raise
    finally:
        _SignalState.installed, _SignalState.received, _SignalState.ours = False, None, ()
        for s in ours:
            signal.signal(s, defaults[s])
