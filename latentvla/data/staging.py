"""What the dataset writers share: `with` support, and a hidden temp directory published on `close()`."""

from __future__ import annotations

import os
from pathlib import Path

from latentvla.errors import LatentVLAError


class WriterContext:
    """`with w:` calls `close()` on success and `abort()` on an error."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class StagedDirWriter(WriterContext):
    """A writer of a dataset directory: files go into `self._tmp` (a temp dir beside `out_dir`, from
    `latentvla.utils.atomic.atomic_directory`), which `close()` renames onto `out_dir` after the subclass's
    `_finish()` (write the last files) and `abort()` removes after its `_release()` (close open files);
    nothing partial is ever visible at `out_dir`."""

    def _stage(self, out_dir: str | os.PathLike, overwrite: bool) -> None:
        from latentvla.utils.atomic import atomic_directory

        self.out_dir, self.overwrite, self._closed = Path(out_dir), overwrite, False
        if self.out_dir.exists() and not overwrite:
            raise LatentVLAError(f"{type(self).__name__}: {self.out_dir} already exists (pass overwrite=True to "
                                 "replace it)")
        self._staging = atomic_directory(self.out_dir, overwrite=True)
        self._tmp: Path = self._staging.__enter__()

    def close(self) -> Path:
        if self._closed:
            return self.out_dir
        try:
            self._finish()
            if self.out_dir.exists() and not self.overwrite:
                raise LatentVLAError(f"{type(self).__name__}: {self.out_dir} appeared while writing (pass "
                                     "overwrite=True to replace it)")
            self._staging.__exit__(None, None, None)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.out_dir

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()
        err = LatentVLAError(f"{type(self).__name__}: aborted")
        self._staging.__exit__(type(err), err, None)  # removes the temp dir
