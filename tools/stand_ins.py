"""The base images a generated project builds on, in the engine: real ones, or stand-ins.

`ensure_base_images` (after `tools.docker_engine.ensure_engine`) makes each image the generated
Dockerfile and compose files name present: one already there is kept, a missing one is pulled,
and where no registry can be reached a stand-in is built from Debian's packages
(`tools.stand_in_recipes` says how) and tagged with the real image's exact name.

Invariants:

- Every stand-in, and every Debian base under one, carries the label `STAND_IN_LABEL`: a
  stand-in's value is the digest of the recipe it was built from, a base's the way it was made.
  A later run tells a stand-in from the real image by it, and rebuilds one whose recipe changed.
- Images stay in the daemon's storage, so a machine builds each stand-in once; an image this
  module replaced is removed only when no name points to it any more.
- All of it runs under `tools.docker_engine.machine_lock`.

Every failure is raised as `DockerUnavailable`; when a command failed it is the subclass
`CommandFailed`, whose message ends with the last lines the command printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools import commands, roots
from tools.docker_engine import (
    CommandFailed,
    DockerUnavailable,
    as_docker_errors,
    machine_lock,
    require_command,
    run,
)
from tools.stand_in_recipes import (
    Recipe,
    base_tag,
    base_version,
    split_reference,
    stand_in_recipe,
)

# What `ensure_base_images` says about each image.
LOCAL = "local"  # a real image that was already there
PULLED = "pulled"  # a real image, pulled just now
STAND_IN = "stand-in"  # built here from Debian's packages (now or on an earlier run)

STAND_IN_LABEL = "fastapi-jwt-redis-template.stand-in"
PULL_TIMEOUT = 120.0
IMPORT_TIMEOUT = 600.0  # seconds to pack and import a root file system
BUILD_TIMEOUT = 900.0


def ensure_base_images(images: Sequence[str], workdir: Path) -> dict[str, str]:
    """Make sure each named image is in the engine; say for each how it got there.

    An image already present is kept ('local', or 'stand-in' if it is one of ours and its recipe
    is unchanged). A missing one is pulled ('pulled'); when that fails, a stand-in is built from
    Debian's packages and tagged with the image's exact name ('stand-in'). Builds use temporary
    directories under `workdir`. Raises `DockerUnavailable` when an image can be had neither way.
    """
    docker = require_command("docker")
    workdir.mkdir(parents=True, exist_ok=True)
    with machine_lock():
        return {image: _ensure_image(docker, image, workdir) for image in images}


# Images


def _ensure_image(docker: str, image: str, workdir: Path) -> str:
    """Make one image present; return LOCAL, PULLED or STAND_IN."""
    present = _inspect_image(docker, image)
    if present is not None:
        if STAND_IN_LABEL not in present.labels:
            return LOCAL
        with contextlib.suppress(DockerUnavailable):
            if present.labels[STAND_IN_LABEL] == stand_in_recipe(image).digest:
                return STAND_IN
    outcome = _pull_or_build(docker, image, workdir)
    if present is not None:
        _remove_image(docker, present.image_id)  # the outdated stand-in the new image replaced
    return outcome


def _pull_or_build(docker: str, image: str, workdir: Path) -> str:
    """Pull an image, or build its stand-in when it cannot be pulled; return PULLED or STAND_IN."""
    pull_failure = _try_pull(docker, image)
    if pull_failure is None:
        return PULLED
    try:
        recipe = stand_in_recipe(image)
    except DockerUnavailable as error:
        raise DockerUnavailable(f"cannot pull {image} ({pull_failure}), and {error}") from None
    _ensure_base(docker, workdir, recipe.suite)
    _build_stand_in(docker, image, recipe, workdir)
    return STAND_IN


@dataclass(frozen=True)
class _PresentImage:
    """What this module needs to know of an image the engine has."""

    image_id: str
    labels: Mapping[str, str]
    tags: tuple[str, ...]


def _inspect_image(docker: str, image: str) -> _PresentImage | None:
    """The ID and labels of an image present in the engine, or None if it is not there."""
    result = commands.probe([docker, "image", "inspect", image])
    if result is None or result.returncode != 0:
        return None
    details = json.loads(result.stdout)[0]
    config = details.get("Config") or {}
    return _PresentImage(
        image_id=details["Id"],
        labels=dict(config.get("Labels") or {}),
        tags=tuple(details.get("RepoTags") or ()),
    )


def _remove_image(docker: str, image_id: str) -> None:
    """Remove an image that no name points to any more, if nothing uses it; never fail.

    An image that still has a name is kept: identical builds share one image, so the stand-in
    just replaced under one name may still be in use under another.
    """
    present = _inspect_image(docker, image_id)
    if present is not None and not present.tags:
        commands.probe([docker, "image", "rm", image_id])


def _try_pull(docker: str, image: str) -> str | None:
    """Pull an image; None when that worked, else the reason in one line."""
    try:
        run([docker, "pull", image], step=f"pulling {image}", timeout=PULL_TIMEOUT)
    except CommandFailed as failure:
        lines = failure.output.strip().splitlines()
        return lines[-1] if lines else str(failure).splitlines()[0]
    return None


def _build_stand_in(docker: str, image: str, recipe: Recipe, workdir: Path) -> None:
    """Build a stand-in with the classic builder and tag it with the image's name."""
    repository, _ = split_reference(image)
    with tempfile.TemporaryDirectory(prefix=f"stand-in-{repository}-", dir=workdir) as context:
        recipe.write(Path(context))
        run(
            [
                docker,
                "build",
                "--force-rm",
                "--label",
                f"{STAND_IN_LABEL}={recipe.digest}",
                "--tag",
                image,
                context,
            ],
            step=f"building a stand-in for {image}",
            timeout=BUILD_TIMEOUT,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )


# The stand-ins' Debian base


def _ensure_base(docker: str, workdir: Path, suite: str) -> None:
    """Make sure the minimal Debian image of `suite` that stand-ins build on is in the engine.

    It is made once per machine: debootstrap writes a root file system (`tools.roots`, with
    this machine's apt settings and no service starts), which is imported.
    """
    tag, version = base_tag(suite), base_version(suite)
    present = _inspect_image(docker, tag)
    if present is not None and present.labels.get(STAND_IN_LABEL) == version:
        return
    if os.geteuid() != 0:
        raise DockerUnavailable("making the stand-ins' Debian base with debootstrap needs root")
    build_dir = Path(tempfile.mkdtemp(prefix=f"stand-in-base-{suite}-", dir=workdir))
    rootfs = build_dir / "rootfs"
    try:
        with as_docker_errors():
            roots.debootstrap(suite, rootfs)
            roots.forbid_service_starts(rootfs)
            roots.follow_host_apt_settings(rootfs)
        _drop_apt_caches(rootfs)
        _import_rootfs(docker, rootfs, build_dir / "tar-errors.log", tag, version)
    finally:
        roots.remove_tree(build_dir)
    if present is not None:
        _remove_image(docker, present.image_id)  # an outdated base, unless stand-ins still use it


def _drop_apt_caches(rootfs: Path) -> None:
    """Delete the packages debootstrap downloaded and apt's lists and caches: images need none."""
    leftovers = [
        *rootfs.glob("var/cache/apt/archives/*.deb"),
        *rootfs.glob("var/cache/apt/*.bin"),
        *(path for path in rootfs.glob("var/lib/apt/lists/*") if path.is_file()),
    ]
    for path in leftovers:
        if path.name != "lock":
            path.unlink()


def _import_rootfs(docker: str, rootfs: Path, tar_log: Path, tag: str, version: str) -> None:
    """Pack a root file system with tar and import it into the engine as `tag`, labelled with
    the `version` of the way it was made."""
    tar_command = ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."]
    import_command = [
        docker,
        "import",
        "--change",
        f"LABEL {STAND_IN_LABEL}={version}",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["bash"]',
        "-",
        tag,
    ]
    with (
        tar_log.open("wb") as tar_errors,
        subprocess.Popen(tar_command, stdout=subprocess.PIPE, stderr=tar_errors) as tar,
    ):
        assert tar.stdout is not None
        try:
            run(
                import_command,
                step="importing the Debian root file system",
                timeout=IMPORT_TIMEOUT,
                stdin=tar.stdout,
            )
        finally:
            tar.stdout.close()  # should the import stop early, tar stops too
    if tar.returncode != 0:
        raise CommandFailed(
            "packing the Debian root file system",
            tar_command,
            f"exited {tar.returncode}",
            commands.read_text(tar_log),
        )
