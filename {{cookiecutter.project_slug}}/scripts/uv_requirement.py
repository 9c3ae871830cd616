"""Print the pip requirement that installs uv exactly as `uv.lock` pins it: the version, and the
hash of every file of that version the lock lists.

`make install` and the Dockerfile install uv with it (`pip install --require-hashes`), then let
uv install everything else from the lock. So uv's version is written in one place, the lock (a
dependency update moves it there), and the first tool downloaded is checked like all the rest.
Needs only Python 3.11+ (`tomllib`).

    python scripts/uv_requirement.py [path/to/uv.lock] > uv-requirement.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def uv_requirement(lock: Path) -> str:
    with lock.open("rb") as file:
        packages = tomllib.load(file)["package"]
    uv = next((package for package in packages if package["name"] == "uv"), None)
    if uv is None:
        raise SystemExit(f"error: {lock} pins no uv (it belongs in the dev extra)")
    files = [*uv.get("wheels", []), *([uv["sdist"]] if "sdist" in uv else [])]
    hashes = " ".join(f"--hash={file['hash']}" for file in files)
    return f"uv=={uv['version']} {hashes}"


if __name__ == "__main__":
    print(uv_requirement(Path(sys.argv[1] if len(sys.argv) > 1 else "uv.lock")))
