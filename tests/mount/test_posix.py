"""POSIX conformance of a real mount, on the local and S3 backends, as root and as an
unprivileged user.

The rules come from POSIX.1-2017 and the Linux man pages (open(2), rename(2), rmdir(2),
unlink(2), chmod(2), chown(2), utimensat(2), truncate(2), symlink(7), path_resolution(7),
inode(7)), not from any implementation. What the kernel checks by itself with
``default_permissions`` (mode bits, sticky directories, who may set which time) is tested too:
the mount must let it see the right owner and mode. Needs root (to switch users and make
device nodes); the unprivileged user is a bare uid/gid without a passwd entry.
"""

# The os-level system calls are what this module tests, so pathlib's spellings are not wanted:
# ruff: noqa: PTH101, PTH102, PTH104, PTH106, PTH115, PTH116, PTH211

from __future__ import annotations

import ctypes
import errno
import inspect
import os
import shutil
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mount.harness import LOCAL, S3, Mount, MountFactory, clean_env, ok
from tests.mount.stores import LocalStore, S3Store, Store

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="switches users and makes device nodes"),
]

USER = 4242  # the unprivileged uid, and its primary gid
OTHER_GROUP = 4343  # a group USER is not in
SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100


def utimensat(path: str, atime: Any, mtime: Any) -> None:
    """utimensat(2) itself (os.utime has no UTIME_OMIT): each time is (sec, nsec),
    UTIME_NOW or UTIME_OMIT."""
    libc = ctypes.CDLL(None, use_errno=True)

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def ts(value: Any) -> Timespec:
        return Timespec(0, value) if isinstance(value, int) else Timespec(*value)

    times = (Timespec * 2)(ts(atime), ts(mtime))
    if libc.utimensat(-100, os.fsencode(path), times, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def outcome(fn: Callable[..., Any], *args: Any) -> str:
    """ "ok", or the name of the errno the call failed with."""
    try:
        fn(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "ok"


# The same helpers for scripts run as the unprivileged user (system python, stdlib only).
PRELUDE = (
    "import ctypes, errno, os\n"
    f"UTIME_NOW, UTIME_OMIT = {UTIME_NOW}, {UTIME_OMIT}\n"
    + textwrap.dedent(inspect.getsource(utimensat))
    + textwrap.dedent(inspect.getsource(outcome))
    + "from typing import Any, Callable\n"
)


def as_user(
    m: Mount, script: str, uid: int = USER, gid: int = USER, groups: tuple[int, ...] = ()
) -> list[str]:
    """Run ``script`` (which prints outcomes) in the mount as ``uid``; its output words."""
    assert SYSTEM_PYTHON is not None
    code = "from typing import Any, Callable\n" + PRELUDE + textwrap.dedent(script)
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", code],
        cwd=m.path,
        user=uid,
        group=gid,
        extra_groups=list(groups),
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env({}),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A mount point every user can reach (pytest's tmp_path is private to root). Requested
    before ``mount`` so it is removed after the unmount."""
    base = Path(tempfile.mkdtemp(prefix="storagefs-posix-", dir="/tmp"))
    base.chmod(0o755)
    (base / "mnt").mkdir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def posix_mount(public_dir: Path, store: Store, mount: MountFactory) -> Callable[..., Mount]:
    """``posix_mount(cache="cache", options=())``: the store mounted with allow_other on the
    public mount point; a new cache directory means a mount that knows only the store."""

    def start(cache: str = "cache", options: tuple[str, ...] = ()) -> Mount:
        return mount(
            store,
            options=("allow_other", *options),
            mountpoint=public_dir / "mnt",
            cache_dir=public_dir / cache,
        )

    return start


def stored_metadata(store: Store, key: str) -> dict[str, str]:
    """The user metadata of ``key`` as the store itself holds it."""
    if isinstance(store, LocalStore):
        path = store.root / key
        prefix = "user.storagefs."
        return {
            name[len(prefix) :]: os.getxattr(path, name, follow_symlinks=False).decode()
            for name in os.listxattr(path, follow_symlinks=False)
            if name.startswith(prefix)
        }
    assert isinstance(store, S3Store)
    head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
    meta: dict[str, str] = head["Metadata"]
    return meta


def put_with_metadata(store: Store, key: str, body: bytes, meta: dict[str, str]) -> None:
    """An object written by another tool (s3fs) straight into the store."""
    if isinstance(store, LocalStore):
        store.put(key, body)
        for name, value in meta.items():
            os.setxattr(store.root / key, f"user.storagefs.{name}", value.encode())
        return
    assert isinstance(store, S3Store)
    store.client.put_object(
        Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=body, Metadata=meta
    )


BACKENDS = pytest.mark.parametrize("store", [LOCAL, S3], indirect=True)


# --- file types: symbolic links, FIFOs, sockets, devices; hard links ---------------------


@BACKENDS
def test_file_types_stored_as_s3fs_does_and_survive_a_remount(
    posix_mount: Callable[..., Mount], store: Store
) -> None:
    m = posix_mount()
    p = m.path
    (p / "dir").mkdir()
    (p / "dir/file").write_text("content\n")
    os.symlink("file", p / "dir/rel")
    os.symlink("/etc/hostname", p / "abs")
    os.symlink("nowhere/at/all", p / "dangling")
    os.mkfifo(p / "fifo", 0o640)
    os.mknod(p / "sock", 0o600 | stat.S_IFSOCK)
    os.mknod(p / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(p / "disk", 0o660 | stat.S_IFBLK, os.makedev(8, 1))

    def check(root: Path) -> None:
        assert os.readlink(root / "dir/rel") == "file"
        assert (root / "dir/rel").read_text() == "content\n"  # followed by the kernel
        link = os.lstat(root / "dir/rel")
        assert stat.S_ISLNK(link.st_mode) and link.st_size == len("file")
        assert os.readlink(root / "abs") == "/etc/hostname"
        assert os.readlink(root / "dangling") == "nowhere/at/all"
        assert outcome(os.stat, root / "dangling") == "ENOENT"
        assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
        assert stat.S_IMODE(os.lstat(root / "fifo").st_mode) == 0o640
        assert stat.S_ISSOCK(os.lstat(root / "sock").st_mode)
        null = os.lstat(root / "null")
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
        disk = os.lstat(root / "disk")
        assert stat.S_ISBLK(disk.st_mode) and disk.st_rdev == os.makedev(8, 1)
        listing = ok(f"ls -l {root}/dir {root}")
        assert "rel -> file" in listing and "dangling -> nowhere/at/all" in listing
        found = ok(f"cd {root} && find -L . -type f ! -name from-s3fs | sort").split()
        assert found == ["./abs", "./dir/file", "./dir/rel"]

    check(p)
    # The store holds them the way s3fs does: a link's body is its target, the mode (decimal,
    # type bits included) says what the object is, devices carry rdev.
    assert store.get("dir/rel") == b"file"
    assert stored_metadata(store, "dir/rel")["mode"] == str(stat.S_IFLNK | 0o777)
    assert stored_metadata(store, "fifo")["mode"] == str(stat.S_IFIFO | 0o640)
    assert store.get("fifo") == b""
    assert stored_metadata(store, "null")["rdev"] == str(os.makedev(1, 3))
    # A link another s3fs client wrote reads as a link here.
    put_with_metadata(store, "from-s3fs", b"dir/file", {"mode": str(stat.S_IFLNK | 0o777)})

    # Changes to special files go through like any other change.
    os.rename(p / "fifo", p / "dir/fifo2")
    os.chmod(p / "dir/fifo2", 0o600)
    os.lchown(p / "abs", USER, USER)
    os.unlink(p / "sock")
    assert os.stat(p / "dir/file").st_nlink == 1
    m.unmount()

    m2 = posix_mount(cache="cache2")  # knows nothing but the store
    q = m2.path
    os.rename(q / "dir/fifo2", q / "fifo")
    os.chmod(q / "fifo", 0o640)
    os.mknod(q / "sock", 0o600 | stat.S_IFSOCK)
    check(q)
    assert os.readlink(q / "from-s3fs") == "dir/file"
    assert os.lstat(q / "abs").st_uid == USER
    assert not (q / "hard").exists()


# --- timestamps ------------------------------------------------------------------------


@BACKENDS
def test_ctime_mtime_atime_follow_posix(posix_mount: Callable[..., Mount]) -> None:
    m = posix_mount()
    p = m.path
    (p / "d").mkdir()
    f = p / "d/f"
    f.write_text("x")

    def changed(path: Path, action: Callable[[], object], times: str) -> None:
        """``action`` moves exactly the times named (of m, c) forward on ``path``."""
        before = os.lstat(path)
        action()
        after = os.lstat(path)
        for name in "mc":
            field = f"st_{name}time_ns"
            moved = getattr(after, field) > getattr(before, field)
            assert moved == (name in times), f"{name}time of {path.name} after {action}"

    changed(f, lambda: os.chmod(f, 0o600), "c")
    changed(f, lambda: os.chown(f, USER, USER), "c")
    changed(f, lambda: os.truncate(f, 100), "mc")
    changed(f, lambda: f.write_bytes(b"new"), "mc")
    fd = os.open(f, os.O_WRONLY)
    try:
        changed(f, lambda: os.write(fd, b"y"), "mc")
        changed(f, lambda: os.ftruncate(fd, 0), "mc")
    finally:
        os.close(fd)
    os.rename(f, p / "d/g")
    g = p / "d/g"
    before = os.lstat(g)
    os.rename(g, p / "d/h")
    assert os.lstat(p / "d/h").st_ctime_ns > before.st_ctime_ns  # rename: the entry's ctime
    os.rename(p / "d/h", g)

    d = p / "d"
    changed(d, lambda: (d / "new").write_text(""), "mc")
    changed(d, lambda: os.unlink(d / "new"), "mc")
    changed(d, lambda: os.mkdir(d / "sub"), "mc")
    changed(d, lambda: os.rmdir(d / "sub"), "mc")
    changed(d, lambda: os.symlink("g", d / "ln"), "mc")
    changed(d, lambda: os.mkfifo(d / "ff"), "mc")
    changed(d, lambda: os.rename(d / "ln", d / "ln2"), "mc")
    changed(d, lambda: os.rename(d / "ln2", p / "out"), "mc")  # renamed out of d
    changed(p, lambda: os.rename(p / "out", d / "in"), "mc")  # ... and out of the root

    # utimensat: explicit times, UTIME_NOW and UTIME_OMIT, each for atime and mtime.
    utimensat(str(g), (1_000_000_000, 5), (1_100_000_000, 7))
    st = os.stat(g)
    assert st.st_atime_ns == 1_000_000_000 * 10**9 + 5
    assert st.st_mtime_ns == 1_100_000_000 * 10**9 + 7
    utimensat(str(g), UTIME_OMIT, (1_200_000_000, 0))
    st = os.stat(g)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000_000_000_005, 1_200_000_000 * 10**9)
    utimensat(str(g), (1_300_000_000, 0), UTIME_OMIT)
    st = os.stat(g)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_300_000_000 * 10**9, 1_200_000_000 * 10**9)
    before = os.stat(g)
    utimensat(str(g), UTIME_NOW, UTIME_OMIT)
    st = os.stat(g)
    assert st.st_atime_ns > before.st_atime_ns and st.st_mtime_ns == before.st_mtime_ns
    assert st.st_ctime_ns > before.st_ctime_ns  # setting times is a change too
    changed(g, lambda: utimensat(str(g), UTIME_NOW, UTIME_NOW), "mc")
    # Reading never moves atime backwards.
    before = os.stat(g)
    g.read_bytes()
    assert os.stat(g).st_atime_ns >= before.st_atime_ns

    os.chmod(g, 0o640)
    kept = os.stat(g)
    m.unmount()
    m2 = posix_mount(cache="cache2")
    again = os.stat(m2.path / "d/g")
    assert (again.st_mtime_ns, again.st_ctime_ns, again.st_atime_ns) == (
        kept.st_mtime_ns,
        kept.st_ctime_ns,
        kept.st_atime_ns,
    )


# --- permissions -----------------------------------------------------------------------


@BACKENDS
def test_permissions_for_an_unprivileged_user(posix_mount: Callable[..., Mount]) -> None:
    m = posix_mount()
    p = m.path
    (p / "pub").mkdir(mode=0o777)
    os.chmod(p / "pub", 0o777)

    # New entries belong to the calling process, not to the daemon.
    assert as_user(m, "open('pub/mine', 'w').close(); os.mkdir('pub/mydir'); print('ok')")
    for name in ("pub/mine", "pub/mydir"):
        st = os.stat(p / name)
        assert (st.st_uid, st.st_gid) == (USER, USER)

    # Mode bits are enforced (default_permissions): chmod 000, then open.
    os.chmod(p / "pub/mine", 0o000)
    assert as_user(m, "print(outcome(open, 'pub/mine'))") == ["EACCES"]
    assert outcome(open, p / "pub/mine") == "ok"  # root is not bound by them
    os.chmod(p / "pub/mine", 0o644)
    (p / "rootfile").write_text("r")
    os.chmod(p / "rootfile", 0o644)
    assert as_user(m, "print(outcome(open, 'rootfile', 'a'))") == ["EACCES"]

    # chown: only root gives a file away; the owner may not pick a group they are not in.
    assert as_user(
        m,
        f"""
        print(outcome(os.chown, 'rootfile', {USER}, -1))
        print(outcome(os.chown, 'pub/mine', 0, -1))
        print(outcome(os.chown, 'pub/mine', -1, {OTHER_GROUP}))
        print(outcome(os.chown, 'pub/mine', -1, {USER}))
        """,
    ) == ["EPERM", "EPERM", "EPERM", "ok"]

    # setuid and setgid go on chown (by anyone) and on a write by someone else.
    (p / "pub/tool").write_text("#!/bin/sh\n")
    os.chmod(p / "pub/tool", 0o6755)
    os.chown(p / "pub/tool", USER, USER)
    assert stat.S_IMODE(os.stat(p / "pub/tool").st_mode) == 0o755
    (p / "pub/shared").write_text("")
    os.chmod(p / "pub/shared", 0o6777)
    assert as_user(m, "open('pub/shared', 'a').write('x'); print('ok')") == ["ok"]
    assert stat.S_IMODE(os.stat(p / "pub/shared").st_mode) == 0o777

    # A setgid directory gives its group to new entries, and its bit to new directories.
    (p / "team").mkdir()
    os.chown(p / "team", 0, OTHER_GROUP)
    os.chmod(p / "team", 0o2777)
    as_user(m, "open('team/f', 'w').close(); os.mkdir('team/sub'); print('ok')")
    assert os.stat(p / "team/f").st_gid == OTHER_GROUP
    sub = os.stat(p / "team/sub")
    assert sub.st_gid == OTHER_GROUP and sub.st_mode & stat.S_ISGID

    # Sticky directory: only the owner of an entry (or of the directory) removes it.
    (p / "tmp").mkdir()
    os.chmod(p / "tmp", 0o1777)
    (p / "tmp/roots").write_text("")
    os.chmod(p / "tmp/roots", 0o666)
    assert as_user(
        m,
        """
        print(outcome(os.unlink, 'tmp/roots'))
        print(outcome(os.rename, 'tmp/roots', 'tmp/mine'))
        open('tmp/users', 'w').close()
        print(outcome(os.unlink, 'tmp/users'))
        """,
    ) == ["EPERM", "EPERM", "ok"]

    # utimensat: only the owner sets explicit times; anyone who may write sets "now".
    (p / "pub/rw").write_text("")
    os.chmod(p / "pub/rw", 0o666)
    assert as_user(
        m,
        """
        print(outcome(utimensat, 'pub/rw', (5, 0), (5, 0)))
        print(outcome(utimensat, 'pub/rw', UTIME_NOW, UTIME_NOW))
        print(outcome(utimensat, 'rootfile', UTIME_NOW, UTIME_NOW))
        print(outcome(utimensat, 'pub/mine', (5, 0), UTIME_OMIT))
        """,
    ) == ["EPERM", "ok", "EACCES", "ok"]
    assert os.stat(p / "pub/mine").st_atime == 5


# --- identity and errnos ----------------------------------------------------------------


@BACKENDS
def test_inode_numbers_and_rename_rules(posix_mount: Callable[..., Mount]) -> None:
    m = posix_mount()
    p = m.path
    os.makedirs(p / "a/b")
    (p / "a/b/f").write_text("f")
    ino = os.stat(p / "a/b/f").st_ino
    dir_ino = os.stat(p / "a/b").st_ino
    os.rename(p / "a/b/f", p / "a/b/g")
    assert os.stat(p / "a/b/g").st_ino == ino
    os.rename(p / "a", p / "z")  # a directory above it
    assert os.stat(p / "z/b/g").st_ino == ino
    assert os.stat(p / "z/b").st_ino == dir_ino
    # The kernel forgetting the inode (memory pressure) does not renumber it.
    subprocess.run(["sh", "-c", "echo 2 > /proc/sys/vm/drop_caches"], capture_output=True)
    assert os.stat(p / "z/b/g").st_ino == ino
    assert os.stat(p / "z/b").st_ino == dir_ino

    os.makedirs(p / "full/x")
    os.mkdir(p / "empty")
    (p / "file").write_text("")
    assert outcome(os.rename, p / "empty", p / "full") == "ENOTEMPTY"
    assert outcome(os.rename, p / "empty", p / "file") == "ENOTDIR"
    assert outcome(os.rename, p / "file", p / "empty") == "EISDIR"
    assert outcome(os.rename, p / "full", p / "full/x/inside") == "EINVAL"
    assert outcome(os.rmdir, p / "full") == "ENOTEMPTY"
    assert outcome(os.rmdir, f"{p}/empty/.") == "EINVAL"  # a str: pathlib drops the "."
    assert outcome(os.unlink, p / "empty") == "EISDIR"
    assert outcome(os.rmdir, p / "file") == "ENOTDIR"
    os.mkdir(p / "empty2")
    empty_ino = os.stat(p / "empty").st_ino
    os.rename(p / "empty", p / "empty2")  # over an empty directory: replaces it
    assert os.stat(p / "empty2").st_ino == empty_ino and not (p / "empty").exists()


@BACKENDS
def test_a_name_found_missing_can_be_made_at_once(posix_mount: Callable[..., Mount]) -> None:
    # While a directory's listing is trusted the kernel remembers the names it found missing
    # (negative entries); every way of making such a name through the mount must show it.
    m = posix_mount()
    d = m.path / "d"
    os.mkdir(d)
    (d / "src").write_text("moved")
    (d / "linked").write_text("linked")
    assert sorted(p.name for p in d.iterdir()) == ["linked", "src"]  # the listing is cached
    makers: dict[str, Callable[[Path], None]] = {
        "create": lambda t: t.write_text("x"),
        "mkdir": os.mkdir,
        "symlink": lambda t: os.symlink("src", t),
        "mkfifo": os.mkfifo,
        "rename": lambda t: os.rename(d / "src", t),
        "link": lambda t: os.link(d / "linked", t),
    }
    for kind, make in makers.items():
        target = d / f"new-{kind}"
        assert outcome(os.lstat, target) == "ENOENT"
        assert outcome(os.lstat, target) == "ENOENT"  # asked again: still missing
        make(target)
        assert outcome(os.lstat, target) == "ok", kind
    assert (d / "new-rename").read_text() == "moved"
    assert sorted(p.name for p in d.iterdir()) == sorted(["linked", *(f"new-{k}" for k in makers)])


@BACKENDS
def test_an_unlinked_or_replaced_open_file_lives_until_closed(
    store: Store, posix_mount: Callable[..., Mount]
) -> None:
    """unlink(2): when the last link goes while a process holds the file open, the file lives
    on until its last descriptor is closed; rename(2) over newpath does the same to the file
    it replaces. Such a file has no links left: fstat(2) reports st_nlink 0."""
    m = posix_mount()
    p = m.path
    # Content the mount never read (another tool wrote it), so what is read after the unlink
    # cannot come from the kernel's page cache or from anything the mount fetched before.
    old = bytes(range(256)) * 400
    put_with_metadata(store, "gone", old, {})
    put_with_metadata(store, "replaced", b"the replaced file", {})
    gone = os.open(p / "gone", os.O_RDONLY)
    replaced = os.open(p / "replaced", os.O_RDONLY)
    try:
        os.unlink(p / "gone")
        (p / "new").write_bytes(b"new")
        os.rename(p / "new", p / "replaced")
        assert os.fstat(gone).st_nlink == 0
        assert os.fstat(replaced).st_nlink == 0
        assert os.pread(gone, 1000, 50_000) == old[50_000:51_000]
        assert os.read(gone, len(old) + 1) == old
        assert os.read(replaced, 100) == b"the replaced file"
    finally:
        os.close(gone)
        os.close(replaced)
    assert not (p / "gone").exists()
    assert (p / "replaced").read_bytes() == b"new"
    assert os.stat(p / "replaced").st_nlink == 1

    # A writer keeps reading and writing the file it unlinked; nothing of it is stored.
    fd = os.open(p / "scratch", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"Hello, World!")
        os.unlink(p / "scratch")
        os.write(fd, b" Still here.")
        assert os.pread(fd, 100, 0) == b"Hello, World! Still here."
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    m.unmount()
    assert "gone" not in store.list_keys() and "scratch" not in store.list_keys()


@BACKENDS
def test_errno_table_and_open_flags(posix_mount: Callable[..., Mount]) -> None:
    m = posix_mount()
    p = m.path
    assert outcome(open, p / ("n" * 255), "w") == "ok"
    assert outcome(open, p / ("n" * 256), "w") == "ENAMETOOLONG"
    assert outcome(os.mkdir, p / ("d" * 256)) == "ENAMETOOLONG"
    assert outcome(os.stat, p / ("s" * 256)) == "ENAMETOOLONG"
    deep = p / "/".join(["p" * 200] * 4)  # a long path an object key still holds
    os.makedirs(deep)
    (deep / ("f" * 200)).write_text("deep")
    assert (deep / ("f" * 200)).read_text() == "deep"
    assert outcome(os.stat, str(p) + "/" + "x/" * 2100) == "ENAMETOOLONG"  # > PATH_MAX
    os.symlink("loop-b", p / "loop-a")
    os.symlink("loop-a", p / "loop-b")
    assert outcome(open, p / "loop-a") == "ELOOP"
    assert outcome(os.open, p / "loop-a", os.O_RDONLY | os.O_NOFOLLOW) == "ELOOP"

    f = p / "f"
    f.write_bytes(b"0123456789")
    assert outcome(os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EEXIST"
    assert outcome(os.open, p / "nofile", os.O_RDONLY) == "ENOENT"
    assert outcome(os.open, p / "f/x", os.O_RDONLY) == "ENOTDIR"
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"AB")  # O_APPEND: at the end whatever the offset
    os.close(fd)
    assert f.read_bytes() == b"0123456789AB"
    fd = os.open(f, os.O_RDWR | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"xyz")
    os.close(fd)
    assert f.read_bytes() == b"xyz"
    # truncate of a file someone holds open: both see the new size.
    fd = os.open(f, os.O_RDWR)
    os.truncate(f, 1)
    assert os.fstat(fd).st_size == 1
    os.pwrite(fd, b"Q", 4)
    os.close(fd)
    assert f.read_bytes() == b"x\0\0\0Q"
    os.mkdir(p / "dir")
    assert outcome(os.open, p / "dir", os.O_WRONLY) == "EISDIR"
    assert outcome(os.truncate, p / "dir", 0) == "EISDIR"
    assert outcome(os.truncate, f, 2**62) == "EFBIG"  # beyond any object a store holds
    m.unmount()

    ro = posix_mount(cache="cache-ro", options=("ro",))
    r = ro.path
    for name, call in [
        ("open for write", lambda: os.open(r / "f", os.O_WRONLY)),
        ("create", lambda: os.open(r / "new", os.O_CREAT | os.O_WRONLY, 0o644)),
        ("mkdir", lambda: os.mkdir(r / "newdir")),
        ("rmdir", lambda: os.rmdir(r / "dir")),
        ("unlink", lambda: os.unlink(r / "f")),
        ("rename", lambda: os.rename(r / "f", r / "g")),
        ("chmod", lambda: os.chmod(r / "f", 0o600)),
        ("chown", lambda: os.chown(r / "f", USER, USER)),
        ("truncate", lambda: os.truncate(r / "f", 0)),
        ("utimensat", lambda: utimensat(str(r / "f"), UTIME_NOW, UTIME_NOW)),
        ("symlink", lambda: os.symlink("f", r / "ln")),
        ("mkfifo", lambda: os.mkfifo(r / "ff")),
        ("link", lambda: os.link(r / "f", r / "hard")),
    ]:
        assert outcome(call) == "EROFS", name
    assert (r / "f").read_bytes() == b"x\0\0\0Q"


@BACKENDS
def test_hard_links_behave_as_on_ext4(posix_mount: Callable[..., Mount], store: Store) -> None:
    """link(2), and what unlink(2), rename(2), chmod(2), truncate(2) and write(2) do to a file
    with several names: one inode, st_nlink counts the names, ctime changes with it."""
    m = posix_mount()
    p = m.path
    os.mkdir(p / "d")
    (p / "f").write_bytes(b"first")
    before = os.stat(p / "f")
    d_before = os.stat(p / "d")
    os.link(p / "f", p / "d/g")
    f, g, d = os.stat(p / "f"), os.stat(p / "d/g"), os.stat(p / "d")
    assert f.st_ino == g.st_ino == before.st_ino
    assert f.st_nlink == g.st_nlink == 2 and g.st_size == 5
    assert f.st_ctime_ns > before.st_ctime_ns and f.st_mtime_ns == before.st_mtime_ns
    assert d.st_mtime_ns > d_before.st_mtime_ns and d.st_ctime_ns > d_before.st_ctime_ns
    assert (p / "d/g").read_bytes() == b"first"
    # Changes through one name show through the other.
    with open(p / "d/g", "r+b") as out:
        out.write(b"FIRST and more")
    assert (p / "f").read_bytes() == b"FIRST and more"
    os.chmod(p / "f", 0o600)
    os.chown(p / "f", USER, USER)
    g = os.stat(p / "d/g")
    assert stat.S_IMODE(g.st_mode) == 0o600 and (g.st_uid, g.st_gid) == (USER, USER)
    os.truncate(p / "d/g", 5)
    assert (p / "f").read_bytes() == b"FIRST"
    assert as_user(m, "print(open('f').read(), os.stat('d/g').st_nlink)") == ["FIRST", "2"]
    # Errors as on ext4; the hidden inode objects are nobody's business.
    assert outcome(os.link, p / "d", p / "d2") == "EPERM"
    assert outcome(os.link, p / "f", p / "d/g") == "EEXIST"
    assert outcome(os.mkdir, p / ".storagefs") == "EPERM"
    assert sorted(x.name for x in p.iterdir()) == ["d", "f"]
    # rename onto another name of the same file does nothing; a rename moves one name.
    os.rename(p / "f", p / "d/g")
    assert os.stat(p / "f").st_nlink == os.stat(p / "d/g").st_nlink == 2
    ctime = os.stat(p / "f").st_ctime_ns
    os.rename(p / "d/g", p / "g")
    assert os.stat(p / "g").st_ino == f.st_ino and os.stat(p / "f").st_ctime_ns > ctime
    # A third name, then unlink: the others stay, the count and ctime follow.
    os.link(p / "g", p / "h")
    assert os.stat(p / "f").st_nlink == 3
    ctime = os.stat(p / "f").st_ctime_ns
    os.unlink(p / "g")
    assert os.stat(p / "f").st_nlink == os.stat(p / "h").st_nlink == 2
    assert os.stat(p / "f").st_ctime_ns > ctime
    assert (p / "h").read_bytes() == b"FIRST"
    m.unmount()

    m2 = posix_mount(cache="cache2")  # knows nothing but the store
    q = m2.path
    f2, h2 = os.stat(q / "f"), os.stat(q / "h")
    assert f2.st_ino == h2.st_ino and f2.st_nlink == 2 and f2.st_size == 5
    assert stat.S_IMODE(h2.st_mode) == 0o600 and h2.st_uid == USER
    assert ok(f"ls -l {q}").count(" 2 4242 4242 5 ") == 2
    fd = os.open(q / "h", os.O_RDONLY)
    try:
        os.unlink(q / "f")
        os.unlink(q / "h")  # the last name: the file lives while it is open
        assert os.fstat(fd).st_nlink == 0
        assert os.read(fd, 100) == b"FIRST"
    finally:
        os.close(fd)
    assert [x.name for x in q.iterdir()] == ["d"]
    m2.unmount()
    leftover = [k for k in store.list_keys() if not k.startswith("d")]
    if isinstance(store, LocalStore):  # its list_keys leaves .storagefs* out
        links = store.root / ".storagefs/links"
        leftover += [str(x) for x in links.iterdir()] if links.exists() else []
    assert leftover == []  # the last unlink took the inode object


@BACKENDS
def test_hard_linked_trees_through_tar_rsync_and_cp(
    posix_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """tar x, rsync -H and cp -al keep hard-linked members one file; rm -rf of a copy leaves
    the count of the others right; rsync -H back out finds them linked."""
    m = posix_mount()
    p = m.path
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"aaa")
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "sub/c")

    def one_file(root: Path, nlink: int) -> None:
        found = [os.stat(root / n) for n in ("a", "b", "sub/c")]
        assert len({s.st_ino for s in found}) == 1 and found[0].st_nlink == nlink
        assert (root / "sub/c").read_bytes() == b"aaa"

    ok(f"tar -C {tmp_path} -cf {tmp_path}/t.tar src && tar -C {p} -xf {tmp_path}/t.tar")
    one_file(p / "src", 3)
    ok(f"rsync -aH {src}/ {p}/rs/")
    one_file(p / "rs", 3)
    ok(f"cp -al {p}/rs {p}/cpal")
    one_file(p / "cpal", 6)
    assert ok(f"cd {p} && find rs -links 6 | sort").split() == ["rs/a", "rs/b", "rs/sub/c"]
    ok(f"rm -rf {p}/cpal")
    one_file(p / "rs", 3)
    ok(f"rsync -aH {p}/rs/ {tmp_path}/back/")
    one_file(tmp_path / "back", 3)


# --- real trees through rsync, tar and cp ----------------------------------------------


def make_tree(root: Path) -> None:
    """A small source tree with what archives carry: modes, links, FIFOs, setgid dirs."""
    (root / "src/lib").mkdir(parents=True)
    (root / "src/lib/code.py").write_text("print('hi')\n")
    (root / "src/run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(root / "src/run.sh", 0o755)
    (root / "src/secret").write_text("s")
    os.chmod(root / "src/secret", 0o600)
    os.symlink("lib/code.py", root / "src/current")
    os.symlink("../src", root / "src/lib/up")
    os.symlink("missing-target", root / "src/dangling")
    os.symlink("/etc/hostname", root / "src/absolute")
    os.mkfifo(root / "src/pipe.fifo", 0o620)
    (root / "shared").mkdir()
    os.chown(root / "shared", 0, OTHER_GROUP)
    os.chmod(root / "shared", 0o2775)
    (root / "shared/doc").write_text("doc")
    os.chown(root / "shared/doc", USER, OTHER_GROUP)
    os.utime(root / "src/lib/code.py", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def manifest(root: Path) -> str:
    """Type, mode, owner, size, mtime (whole seconds: tar's precision) and link target."""
    return ok(
        f"cd {root} && find . -mindepth 1 -printf '%y %m %u:%g %s %TY%Tm%Td%TH%TM%TS %l %P\\n'"
        " | sed -E 's/\\.[0-9]+ / /' | awk '$1==\"d\"{$4=\"-\"} {print}' | sort"
    )


@BACKENDS
def test_rsync_tar_and_cp_keep_a_tree(posix_mount: Callable[..., Mount], tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    make_tree(src)
    m = posix_mount()
    p = m.path
    expected = manifest(src)
    diff = f"diff -r --no-dereference -x '*.fifo' {src}"

    ok(f"tar -C {src} -cf {tmp_path}/tree.tar . && mkdir {p}/tar")
    ok(f"tar -C {p}/tar -xpf {tmp_path}/tree.tar")
    ok(f"{diff} {p}/tar")
    assert manifest(p / "tar") == expected
    ok(f"cp -a {src} {p}/cp")
    ok(f"{diff} {p}/cp")
    assert manifest(p / "cp") == expected
    if shutil.which("rsync"):
        ok(f"rsync -a {src}/ {p}/rsync/")
        ok(f"{diff} {p}/rsync")
        assert manifest(p / "rsync") == expected
        ok(f"rsync -a {p}/rsync/ {tmp_path}/back/")  # and back out of the mount
        assert manifest(tmp_path / "back") == expected
    m.unmount()
    m2 = posix_mount(cache="cache2")
    assert manifest(m2.path / "tar") == expected
    ok(f"{diff} {m2.path}/cp")
