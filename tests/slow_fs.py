"""A slow disk for fault tests: a FUSE file system that passes every call through to a real
directory, each write, fsync, create and rename first waiting ``delay_ms``.

    python -m tests.slow_fs BACKING MOUNTPOINT --delay-ms 30

runs in the foreground until unmounted (``fusermount -u MOUNTPOINT``) or killed. Built on
fusepy (libfuse2); the operations are ours, kept to what the streaming job's outputs need
(Parquet panes, NDJSON, the SQLite ledger and state journal).
"""

from __future__ import annotations

import argparse
import errno
import os
import time

from fuse import FUSE, FuseOSError, Operations


class SlowPassthrough(Operations):
    """Every path is ``backing`` + path; writes and syncs are slowed by ``delay_s``."""

    def __init__(self, backing: str, delay_s: float):
        self.backing, self.delay_s = os.path.realpath(backing), delay_s

    def _p(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _slow(self) -> None:
        time.sleep(self.delay_s)

    def __call__(self, op, *args):
        try:
            return super().__call__(op, *args)
        except OSError as err:  # the backing file system's error, as the caller should see it
            raise FuseOSError(err.errno or errno.EIO) from None

    # -- metadata --------------------------------------------------------------------------
    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid",
                                             "st_atime", "st_mtime", "st_ctime")}

    def access(self, path, amode):
        if not os.access(self._p(path), amode):
            raise FuseOSError(errno.EACCES)

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._p(path))]

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                             "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def utimens(self, path, times=None):
        os.utime(self._p(path), times)

    # -- namespace -------------------------------------------------------------------------
    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def unlink(self, path):
        os.unlink(self._p(path))

    def rename(self, old, new):
        self._slow()
        os.rename(self._p(old), self._p(new))

    # -- files -----------------------------------------------------------------------------
    def create(self, path, mode, fi=None):
        self._slow()
        return os.open(self._p(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)  # mmap reads too

    def open(self, path, flags):
        return os.open(self._p(path), flags)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._slow()
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is None:
            os.truncate(self._p(path), length)
        else:
            os.ftruncate(fh, length)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        self._slow()
        os.fsync(fh)

    def release(self, path, fh):
        os.close(fh)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("backing")
    p.add_argument("mountpoint")
    p.add_argument("--delay-ms", type=float, default=30.0)
    a = p.parse_args(argv)
    FUSE(SlowPassthrough(a.backing, a.delay_ms / 1000), a.mountpoint, foreground=True, nothreads=False,
         attr_timeout=0, entry_timeout=0)


if __name__ == "__main__":
    main()
