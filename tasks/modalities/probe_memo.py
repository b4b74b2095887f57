"""What align learned about each file the last time: its SHA-256, by the file's identity.

A scheduled retrain aligns every row again, though a drop adds 5 % of them: hashing and
test-decoding 12,600 photos took 4.5 s of a 59 s retrain, every day, for files that had not
changed. A file whose size, modification time, change time and inode match what was recorded
when it hashed to a digest and decoded is taken to hold the same bytes, as DVC's state
database and git's index take it. The change time is set by the kernel on every write and
cannot be restored by tools that keep modification times (`cp -p`, `rsync -t`), so a file
rewritten in place is hashed again. A file changed in the seconds before it was probed is
not recorded: a second write within the same clock tick could not be told apart.

Nothing here can change what align writes, only how fast: extraction checks each file's
digest again as it decodes it (`read_verified`), and refuses a file that no longer matches.
The memo lives in the feature cache's folder (`cache.dir/probes`), outside DVC, like the
features themselves; deleting it costs one full pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path

import pandas as pd

from tasks.atomic import atomic_path

FOLDER = "probes"  # under cache.dir
_SETTLED_NS = 2_000_000_000  # a file changed this recently is probed again next time
_COLUMNS = ("path", "size", "mtime_ns", "ctime_ns", "inode", "digest")
Identity = tuple[int, int, int, int]


def memo_folder(cache_dir: str | Path) -> Path:
    """Where align (and the monitor's alignment of the sources) keeps the memo, for `cache.dir`."""
    return Path(cache_dir) / FOLDER


def identity(stat: os.stat_result) -> Identity:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


class ProbeMemo:
    """Digests of the files that decoded, by path under one root, for one modality's probe.

    `fingerprint` names what a verdict depends on (the modality's decoder and its libraries):
    another fingerprint or root is another memo file, so an upgraded decoder probes afresh.
    Only the files looked up or recorded in this run are saved, so a removed file drops out.
    """

    def __init__(self, folder: Path, root: Path, fingerprint: str) -> None:
        key = hashlib.sha256(json.dumps([str(root.resolve()), fingerprint]).encode()).hexdigest()[:24]
        self.path = folder / f"{key}.parquet"
        self._started_ns = time.time_ns()
        self._known: dict[str, tuple[Identity, str]] = {}
        self._kept: dict[str, tuple[Identity, str]] = {}
        try:
            table = pd.read_parquet(self.path)
        except (OSError, ValueError):  # none yet, or unreadable: a full pass rebuilds it
            return
        for path, size, mtime, ctime, inode, digest in table[list(_COLUMNS)].itertuples(index=False):
            self._known[path] = ((int(size), int(mtime), int(ctime), int(inode)), digest)

    def digest(self, path: str, stat: os.stat_result) -> str | None:
        """The file's recorded digest when it is unchanged since, else None (probe it)."""
        entry = self._known.get(path)
        if entry is None or entry[0] != identity(stat):
            return None
        self._kept[path] = entry
        return entry[1]

    def remember(self, path: str, stat: os.stat_result, digest: str) -> None:
        """Record a file that decoded; `stat` must be taken before it was read."""
        if self._started_ns - max(stat.st_mtime_ns, stat.st_ctime_ns) >= _SETTLED_NS:
            self._kept[path] = (identity(stat), digest)

    def save(self) -> None:
        """Write the files seen in this run (atomically: a reader sees the old memo or the new)."""
        if not self._kept and not self.path.exists():
            return
        rows = [(path, *ident, digest) for path, (ident, digest) in sorted(self._kept.items())]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            pd.DataFrame(rows, columns=list(_COLUMNS)).to_parquet(tmp, index=False)


def library_versions(*names: str) -> list[str]:
    """`name==version` of each installed distribution (a decoder's verdicts follow its version)."""
    found = []
    for name in names:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}==?")
    return found
