"""A FUSE file system that loses, at a "power cut", every change that was not flushed (for tests).

It keeps two states in memory: the *volatile* one that programs see (the page cache, in effect) and
the *durable* one (what a disk would hold after a power failure). Only these calls move state from
the first to the second, as on a POSIX file system that promises nothing more (LazyFS's model):

* ``fsync``/``fdatasync`` of a file: its bytes (and size, mode) — not its name;
* ``fsync`` of a directory: its entries (the names it holds, and which file or folder each names).

A name made durable for a file whose bytes never were gives an empty file after the cut (the inode
exists, its data was lost). ``syncfs``/``sync`` reach no FUSE file system (the kernel does not pass
them on), so here, as on many real stacks, they make nothing durable.

Run as a process (``python -m pacskit.testing.lossyfs MOUNTPOINT``) and driven on stdin, one command
a line, each answered on stdout with one line:

``cut``      take the power away: from now on every operation fails with EIO (so nothing more is
             acknowledged) — answers ``cut <files> <bytes>`` (what survived);
``arm N``    take the power away by itself just before the N-th change from now (a write, create,
             rename, unlink, flush…): a cut at a precise point of the work — answers ``cut …`` then;
``restore``  unmount, replace the volatile state by the durable one, mount again: the machine rebooted
             on what the disk kept — answers ``mounted``;
``quit``     unmount and exit.

The mount is ready when the process has printed ``mounted``. :class:`LossyMount` does all this for a
test. Linux only; needs ``/dev/fuse``, libfuse 3 (Debian ``fuse3``) and ``mfusepy``.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_MOUNT_DEADLINE_S = 20.0
_FUSE_CAP_AUTO_INVAL_DATA = 1 << 12  # libfuse 3 fuse_common.h


@dataclass
class _Node:
    """One inode: a file (``data``) or a folder (``entries``: name -> inode number)."""

    is_dir: bool
    mode: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)
    mtime_ns: int = field(default_factory=time.time_ns)
    nlink: int = 1


@dataclass
class _Durable:
    """What a flush put on "disk" for one inode."""

    is_dir: bool
    mode: int
    data: bytes = b""
    entries: dict[str, int] = field(default_factory=dict)
    mtime_ns: int = 0


def _operations_base() -> Any:
    import mfusepy

    return mfusepy.Operations


class LossyOperations(_operations_base()):  # type: ignore[misc]
    """The FUSE operations over the two states (one lock: this is a test file system, not a fast one)."""

    use_ns = True

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._nodes: dict[int, _Node] = {1: _Node(True, stat.S_IFDIR | 0o755, nlink=2)}
        self._durable: dict[int, _Durable] = {1: _Durable(True, stat.S_IFDIR | 0o755)}
        self._next_ino = 2
        self._handles: dict[int, int] = {}  # fh -> inode (a file renamed or unlinked while open)
        self._next_fh = 1
        self.cut = False
        self.mounted = threading.Event()
        self.flushes = 0
        self.changes = 0
        self._armed: int | None = None
        self.on_cut: Any = None  # called with (files, bytes) when an armed cut happens

    def arm(self, changes: int) -> None:
        """Cut the power just before the ``changes``-th change from now."""
        with self._lock:
            self._armed = max(1, changes)

    def _change(self) -> None:
        """Every operation that changes state comes through here first (the lock is held)."""
        self._live()
        self.changes += 1
        if self._armed is not None:
            self._armed -= 1
            if self._armed <= 0:
                self._armed = None
                survived = self.power_cut()
                if self.on_cut is not None:
                    self.on_cut(*survived)
                self._live()

    # state ---------------------------------------------------------------------------------------

    def _live(self) -> None:
        if self.cut:
            import mfusepy

            raise mfusepy.FuseOSError(errno.EIO)

    def _resolve(self, path: str) -> int:
        import mfusepy

        ino = 1
        for part in path.strip("/").split("/"):
            if not part:
                continue
            node = self._nodes[ino]
            if not node.is_dir:
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            try:
                ino = node.entries[part]
            except KeyError:
                raise mfusepy.FuseOSError(errno.ENOENT) from None
        return ino

    def _parent(self, path: str) -> tuple[_Node, str]:
        import mfusepy

        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._nodes[self._resolve(head or "/")]
        if not parent.is_dir:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _new(self, node: _Node) -> int:
        ino = self._next_ino
        self._next_ino += 1
        self._nodes[ino] = node
        return ino

    def _handle(self, ino: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = ino
        return fh

    def _file(self, path: str, fh: int | None) -> _Node:
        ino = self._handles.get(fh, 0) if fh else 0
        return self._nodes[ino] if ino in self._nodes else self._nodes[self._resolve(path)]

    @property
    def state_lock(self) -> Any:
        return self._lock

    def power_cut_now(self) -> None:
        """Cut now, as an armed cut would (``on_cut`` is called)."""
        with self._lock:
            self._armed = None
            survived = self.power_cut()
            if self.on_cut is not None:
                self.on_cut(*survived)

    def power_cut(self) -> tuple[int, int]:
        """Stop everything (EIO from now on); returns (files, bytes) of the durable state."""
        with self._lock:
            self.cut = True
            files = [d for d in self._durable.values() if not d.is_dir]
            return len(files), sum(len(d.data) for d in files)

    def reboot(self) -> None:
        """The volatile state becomes what the durable state holds (reachable from the root)."""
        with self._lock:
            nodes: dict[int, _Node] = {}

            def rebuild(ino: int, d: _Durable) -> None:
                node = nodes[ino] = _Node(d.is_dir, d.mode, bytearray(d.data), {}, d.mtime_ns)
                for name, child in d.entries.items():
                    if child not in nodes:
                        kept = self._durable.get(child)
                        if kept is not None:
                            rebuild(child, kept)
                        else:  # a name made durable, the file's bytes never were: an empty file
                            old = self._nodes.get(child)
                            if old is None or old.is_dir:
                                continue
                            nodes[child] = _Node(False, old.mode, mtime_ns=0)
                    node.entries[name] = child

            rebuild(1, self._durable[1])
            self._nodes = nodes
            self._durable = {ino: d for ino, d in self._durable.items() if ino in nodes}
            for ino, node in nodes.items():  # an empty file that survived is durable as it is
                if ino not in self._durable:
                    self._durable[ino] = _Durable(node.is_dir, node.mode)
            self._handles.clear()
            self.cut = False

    # FUSE ------------------------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        """Mounted. The kernel's page cache is kept authoritative while mounted (no invalidation on
        open or when a file's time changes): SQLite's shared-memory file (``-shm``) is written through
        ``mmap`` by several processes, and a cache dropped under them would show stale pages. Every
        remount (a reboot) starts with an empty cache."""
        if conn_info is not None:
            conn_info.want &= ~_FUSE_CAP_AUTO_INVAL_DATA
        if config is not None:
            config.kernel_cache = 1
        self.mounted.set()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._lock:
            self._live()
            ino = self._handles.get(fh, 0) if fh else 0
            if ino not in self._nodes:
                ino = self._resolve(path)
            node = self._nodes[ino]
            size = 4096 if node.is_dir else len(node.data)
            return {
                # Our inode numbers, never reused (use_ino): SQLite tells files apart by (device,
                # inode); numbers libfuse makes up per path may repeat for two open databases.
                "st_ino": ino, "st_mode": node.mode, "st_nlink": node.nlink, "st_size": size,
                "st_uid": os.getuid(), "st_gid": os.getgid(),
                "st_mtime": node.mtime_ns, "st_ctime": node.mtime_ns, "st_atime": node.mtime_ns,
                "st_blocks": (size + 511) // 512, "st_blksize": 4096,
            }

    def access(self, path: str, amode: int) -> int:
        with self._lock:
            self._live()
            self._resolve(path)
            return 0

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        with self._lock:
            self._live()
            ino = self._resolve(path)
            entries = [(".", ino), ("..", ino), *self._nodes[ino].entries.items()]
            # with use_ino an entry needs its inode number: readdir(3) skips entries of inode 0
            return [(name, {"st_ino": child, "st_mode": self._nodes[child].mode}, 0) for name, child in entries]

    def opendir(self, path: str) -> int:
        with self._lock:
            self._live()
            return self._handle(self._resolve(path))

    def releasedir(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
            return 0

    def mkdir(self, path: str, mode: int) -> int:
        import mfusepy

        with self._lock:
            self._change()
            parent, name = self._parent(path)
            if name in parent.entries:
                raise mfusepy.FuseOSError(errno.EEXIST)
            parent.entries[name] = self._new(_Node(True, stat.S_IFDIR | (mode & 0o7777), nlink=2))
            parent.mtime_ns = time.time_ns()
            return 0

    def rmdir(self, path: str) -> int:
        import mfusepy

        with self._lock:
            self._change()
            parent, name = self._parent(path)
            ino = self._resolve(path)
            if self._nodes[ino].entries:
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
            return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        import mfusepy

        with self._lock:
            self._change()
            parent, name = self._parent(path)
            if name in parent.entries:
                ino = parent.entries[name]
                if self._nodes[ino].is_dir:
                    raise mfusepy.FuseOSError(errno.EISDIR)
            else:
                ino = self._new(_Node(False, stat.S_IFREG | (mode & 0o7777)))
                parent.entries[name] = ino
                parent.mtime_ns = time.time_ns()
            return self._handle(ino)

    def link(self, target: str, source: str) -> int:
        """A hard link: the name ``target`` for the file ``source`` names."""
        import mfusepy

        with self._lock:
            self._change()
            ino = self._resolve(source)
            if self._nodes[ino].is_dir:
                raise mfusepy.FuseOSError(errno.EPERM)
            parent, name = self._parent(target)
            if name in parent.entries:
                raise mfusepy.FuseOSError(errno.EEXIST)
            parent.entries[name] = ino
            self._nodes[ino].nlink += 1
            parent.mtime_ns = time.time_ns()
            return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        """A socket (the server's admin socket) or a FIFO: a node with no data."""
        import mfusepy

        with self._lock:
            self._change()
            parent, name = self._parent(path)
            if name in parent.entries:
                raise mfusepy.FuseOSError(errno.EEXIST)
            parent.entries[name] = self._new(_Node(False, mode))
            parent.mtime_ns = time.time_ns()
            return 0

    def open(self, path: str, flags: int) -> int:
        with self._lock:
            self._live()
            ino = self._resolve(path)
            if flags & os.O_TRUNC:
                self._nodes[ino].data.clear()
            return self._handle(ino)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
            return 0

    def flush(self, path: str, fh: int) -> int:
        with self._lock:
            self._live()
            return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            self._live()
            return bytes(self._file(path, fh).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._lock:
            self._change()
            node = self._file(path, fh)
            end = offset + len(data)
            if len(node.data) < offset:
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset:end] = data
            node.mtime_ns = time.time_ns()
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._lock:
            self._change()
            node = self._file(path, fh)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
            node.mtime_ns = time.time_ns()
            return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        with self._lock:
            self._change()
            node = self._file(path, fh)
            if mode == 0 and offset + size > len(node.data):
                node.data.extend(bytes(offset + size - len(node.data)))
                return 0
            import mfusepy

            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)

    def unlink(self, path: str) -> int:
        with self._lock:
            self._change()
            parent, name = self._parent(path)
            self._resolve(path)
            del parent.entries[name]
            parent.mtime_ns = time.time_ns()
            return 0

    def rename(self, old: str, new: str) -> int:
        import mfusepy

        with self._lock:
            self._change()
            src_parent, src_name = self._parent(old)
            ino = self._resolve(old)
            dst_parent, dst_name = self._parent(new)
            existing = dst_parent.entries.get(dst_name)
            if existing is not None and self._nodes[existing].is_dir:
                if self._nodes[existing].entries:
                    raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            del src_parent.entries[src_name]
            dst_parent.entries[dst_name] = ino
            src_parent.mtime_ns = dst_parent.mtime_ns = time.time_ns()
            return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._lock:
            self._change()
            node = self._nodes[self._resolve(path)]
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._lock:
            self._live()
            return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self._lock:
            self._change()
            node = self._nodes[self._resolve(path)]
            node.mtime_ns = times[1] if times else time.time_ns()
            return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 22, "f_bfree": 1 << 21,
                "f_bavail": 1 << 21, "f_files": 1 << 20, "f_ffree": 1 << 19, "f_namemax": 255}

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._lock:
            self._change()
            ino = self._handles.get(fh) or self._resolve(path)
            node = self._nodes[ino]
            self._durable[ino] = _Durable(False, node.mode, bytes(node.data), {}, node.mtime_ns)
            self.flushes += 1
            return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._lock:
            self._change()
            ino = self._handles.get(fh) or self._resolve(path)
            node = self._nodes[ino]
            self._durable[ino] = _Durable(True, node.mode, b"", dict(node.entries), node.mtime_ns)
            for child in node.entries.values():  # a new folder named here exists (empty) from now on
                sub = self._nodes[child]
                if sub.is_dir and child not in self._durable:
                    self._durable[child] = _Durable(True, sub.mode)
            self.flushes += 1
            return 0


def unusable_reason() -> str | None:
    """Why a lossyfs mount cannot be made on this machine (None: it can): the tests that need one
    skip with this reason."""
    import shutil

    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is absent (Debian fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError, AttributeError) as exc:
        return f"mfusepy/libfuse3 unusable: {exc}"
    return None


def _unmount(mountpoint: str) -> None:
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m pacskit.testing.lossyfs MOUNTPOINT``: see the module docstring."""
    import mfusepy

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pacskit.testing.lossyfs MOUNTPOINT", file=sys.stderr)
        return 2
    mountpoint = os.path.abspath(args[0])
    ops = LossyOperations()
    ops.on_cut = lambda files, size: answer(f"cut {files} {size}")
    quit_requested = threading.Event()
    remounted = threading.Event()

    printing = threading.Lock()

    def answer(line: str) -> None:
        with printing:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def announce_mounts() -> None:
        while not quit_requested.is_set():
            if not ops.mounted.wait(_MOUNT_DEADLINE_S):
                continue
            ops.mounted.clear()
            answer("mounted")
            remounted.set()

    def control() -> None:
        for raw in sys.stdin:
            command = raw.strip()
            if command == "cut":
                with ops.state_lock:  # an armed cut that already happened has answered: one answer per cut
                    if not ops.cut:
                        ops.power_cut_now()
            elif command.startswith("arm "):
                ops.arm(int(command.split()[1]))
            elif command == "restore":
                remounted.clear()
                _unmount(mountpoint)  # the FUSE loop returns; main() reboots the state and mounts again
            elif command == "quit":
                break
            elif command:
                answer(f"error unknown command {command!r}")
        quit_requested.set()
        _unmount(mountpoint)

    threading.Thread(target=control, daemon=True).start()
    threading.Thread(target=announce_mounts, daemon=True).start()
    while not quit_requested.is_set():
        # entry/attr timeouts 0: after a reboot nothing the kernel cached may be believed
        mfusepy.FUSE(ops, mountpoint, foreground=True, nothreads=False, entry_timeout=0, attr_timeout=0,
                     negative_timeout=0, hard_remove=True, use_ino=True, fsname="lossyfs")
        if quit_requested.is_set():
            break
        ops.reboot()
    return 0


class LossyMount:
    """A :mod:`lossyfs <pacskit.testing.lossyfs>` file system mounted at ``mountpoint`` by a child
    process, for the life of the ``with`` block."""

    def __init__(self, mountpoint: str | os.PathLike[str]) -> None:
        self.mountpoint = os.fspath(mountpoint)
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> LossyMount:
        os.makedirs(self.mountpoint, exist_ok=True)
        import pacskit

        # the child imports this very copy of pacskit (a work tree on PYTHONPATH, or the installed one)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(pacskit.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pacskit.testing.lossyfs", self.mountpoint],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env,
        )
        self._expect("mounted")
        return self

    def _send(self, command: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()

    def _expect(self, word: str) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()  # the child answers every command (or dies: EOF)
        if not line.startswith(word):
            raise RuntimeError(f"lossyfs: expected {word!r}, got {line!r} (exit {self._proc.poll()})")
        return line.strip()

    def power_cut(self) -> tuple[int, int]:
        """Take the power away: every later operation fails; returns (files, bytes) that survive."""
        self._send("cut")
        _, files, size = self._expect("cut").split()
        return int(files), int(size)

    def request_cut(self) -> None:
        """Cut now, without waiting for the answer (for a caller already in :meth:`wait_cut`)."""
        self._send("cut")

    def arm(self, changes: int) -> None:
        """Cut the power by itself just before the ``changes``-th change from now; :meth:`wait_cut`
        then returns what survived."""
        self._send(f"arm {changes}")

    def wait_cut(self) -> tuple[int, int]:
        """Wait for the cut an :meth:`arm` (or :meth:`power_cut`) caused; returns (files, bytes)."""
        _, files, size = self._expect("cut").split()
        return int(files), int(size)

    def reboot(self) -> None:
        """Mount again on what survived (call after every process using the mount was stopped)."""
        self._send("restore")
        self._expect("mounted")

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        try:
            self._send("quit")
        except (BrokenPipeError, OSError):
            pass
        try:
            self._proc.wait(timeout=_MOUNT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        _unmount(self.mountpoint)


if __name__ == "__main__":
    sys.exit(main())
