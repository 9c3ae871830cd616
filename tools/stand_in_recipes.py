"""What each stand-in image is built from: its Debian base, its Dockerfile, its build context.

Where no container registry can be reached, each base image the generated project names
(`python:3.14-slim`, `redis:7.4-alpine`, `nginx:1.30-alpine`) is replaced by a *stand-in*: an
image built from Debian's own packages on a minimal Debian root file system (made with
debootstrap, by `tools.roots`) and tagged with the real image's name. `tools.stand_ins` builds
them; this module only says how, and does no I/O but reading this machine's extra CAs.

Invariants:

- A `python:X.Y-slim` stand-in is built on the Debian release whose python3 is X.Y
  (`PYTHON_SUITES`), an `nginx:X.Y-*` one on the release whose nginx is X.Y (`NGINX_SUITES`);
  each build checks that version and fails rather than let a stand-in claim a version it is not.
  redis is built on `DEBIAN_SUITE`.
- `Recipe.digest` covers the base (`BASE_REVISION`) and the whole build context, so a stand-in
  labelled with an older digest is known to be outdated and is rebuilt.
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tools.docker_engine import DockerUnavailable

BASE_REPOSITORY = "fastapi-jwt-redis-template/stand-in-base"  # tagged with the Debian release
DEBIAN_SUITE = "bookworm"  # the release under the stand-ins that do not depend on a Python
# The Debian release whose python3 is each version a python stand-in can be made for.
PYTHON_SUITES = {"3.11": "bookworm", "3.14": "sid"}
# The Debian release whose nginx is each major.minor an nginx stand-in can be made for: 1.30
# (a stable branch, and the first with `resolve` on upstream servers that a Debian release
# ships) from sid.
NGINX_SUITES = {"1.30": "sid"}
# Part of each base image's label value; change it whenever the way a base is made changes,
# and the bases and every stand-in on them are rebuilt.
BASE_REVISION = 3
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")  # CAs this machine adds, e.g. a proxy's


def split_reference(image: str) -> tuple[str, str]:
    """Split an image name into repository and tag: 'python:3.11-slim' -> ('python', '3.11-slim').

    Docker Hub's implicit prefixes are dropped, so 'docker.io/library/redis:7' gives 'redis'.
    """
    repository, tag = image, "latest"
    if ":" in image.rsplit("/", 1)[-1]:
        repository, tag = image.rsplit(":", 1)
    for prefix in ("index.docker.io/", "docker.io/", "library/"):
        repository = repository.removeprefix(prefix)
    return repository, tag


# Stand-in recipes


def base_tag(suite: str) -> str:
    """The name of the minimal Debian image of one release that stand-ins are built on."""
    return f"{BASE_REPOSITORY}:{suite}"


def base_version(suite: str) -> str:
    """The label value of a base image, naming how it was made."""
    return f"debootstrap-minbase-{suite}-{BASE_REVISION}"


@dataclass(frozen=True)
class Recipe:
    """What a stand-in is built from: the Debian release of its base image, a Dockerfile that
    starts `FROM` that base, and the other files of its build context."""

    suite: str
    dockerfile: str
    files: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A short fingerprint of the base and the whole build context; it changes when either
        does."""
        hasher = hashlib.sha256(f"{base_version(self.suite)}\0{self.dockerfile}".encode())
        for name in sorted(self.files):
            content = self.files[name]
            hasher.update(f"\0{name}\0{len(content)}\0".encode())
            hasher.update(content)
        return hasher.hexdigest()[:16]

    def write(self, context: Path) -> None:
        """Lay the build context out in an empty directory."""
        (context / "Dockerfile").write_text(self.dockerfile)
        for name, content in self.files.items():
            target = context / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def stand_in_recipe(image: str) -> Recipe:
    """The recipe of the stand-in for an image; raise `DockerUnavailable` if there is none."""
    repository, tag = split_reference(image)
    if repository == "python":
        return _python_recipe(tag)
    if repository == "redis":
        return _redis_recipe()
    if repository == "nginx":
        return _nginx_recipe(tag)
    raise DockerUnavailable(f"there is no stand-in recipe for {image}")


def _apt_install_step(*packages: str) -> str:
    """A shell command for a Dockerfile RUN: install packages, leave no package lists behind."""
    return (
        "apt-get update"
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(packages)
        + " && apt-get clean && rm -rf /var/lib/apt/lists/*"
    )


def _require_step(*commands: str) -> str:
    """A shell command for a Dockerfile RUN that fails the build if a command is missing."""
    names = " ".join(commands)
    return f'for c in {names}; do command -v "$c" >/dev/null || {{ echo "no $c"; exit 1; }}; done'


def _python_recipe(tag: str) -> Recipe:
    """python:X.Y-slim from the python3 of the Debian release whose python3 is X.Y, with
    `python`, venv, pip and this machine's CAs.

    pip and uv inside a build must trust the same extra certificate authorities as this machine
    (an egress proxy's, for instance), so they are copied into the image and the bundle is named
    by PIP_CERT (pip) and SSL_CERT_FILE (uv, and Python's ssl module).
    """
    version = re.match(r"(\d+\.\d+)(?:-|$)", tag)
    suite = None if version is None else PYTHON_SUITES.get(version[1])
    if version is None or suite is None:
        offered = ", ".join(f"{v} (Debian {s})" for v, s in PYTHON_SUITES.items())
        raise DockerUnavailable(
            f"a stand-in for python exists only for {offered}, not for python:{tag}"
        )
    install = _apt_install_step(
        "python3",
        "python3-venv",
        "python3-pip",
        "python-is-python3",
        "ca-certificates",
        "passwd",
    )
    require = _require_step("python", "python3", "pip", "groupadd", "useradd", "install")
    # The release's python3 must be the version the tag names, or the stand-in would lie.
    major, minor = version[1].split(".")
    check_version = (
        f"python -c 'import sys; assert sys.version_info[:2] == ({major}, {minor}), sys.version'"
    )
    dockerfile = textwrap.dedent(
        f"""\
        FROM {base_tag(suite)}
        ENV LANG=C.UTF-8 \\
            PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
            SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
        COPY extra-ca/ /usr/local/share/ca-certificates/
        RUN {install} \\
            && update-ca-certificates \\
            && rm -f /usr/lib/python3.*/EXTERNALLY-MANAGED \\
            && {require} \\
            && {check_version}
        CMD ["python3"]
        """
    )
    files = {"extra-ca/README": b"Certificate authorities copied from the build machine.\n"}
    for certificate in sorted(EXTRA_CA_DIR.rglob("*.crt")):
        files[f"extra-ca/{certificate.relative_to(EXTRA_CA_DIR)}"] = certificate.read_bytes()
    return Recipe(suite, dockerfile, files)


def _redis_recipe() -> Recipe:
    """redis from Debian's redis-server and redis-tools, run as user redis in /data."""
    install = _apt_install_step("redis-server", "redis-tools")
    require = _require_step("redis-server", "redis-cli")
    dockerfile = textwrap.dedent(
        f"""\
        FROM {base_tag(DEBIAN_SUITE)}
        RUN {install} \\
            && mkdir -p /data \\
            && chown redis:redis /data \\
            && {require}
        WORKDIR /data
        USER redis
        EXPOSE 6379
        CMD ["redis-server"]
        """
    )
    return Recipe(DEBIAN_SUITE, dockerfile)


_NGINX_DEFAULT_SITE = b"""\
# The stand-in's welcome page, like the real image's; a project mounts its own file here.
server {
    listen 80;
    server_name localhost;

    location / {
        root /usr/share/nginx/html;
        index index.html;
    }
}
"""


def _nginx_recipe(tag: str) -> Recipe:
    """nginx:X.Y-* from the nginx of the Debian release whose nginx is X.Y: logs to
    stdout/stderr, sites in conf.d/, in the foreground. The build fails if that release's nginx
    is no longer X.Y, so the stand-in never claims a version it is not."""
    version = re.match(r"(\d+\.\d+)(?:[.-]|$)", tag)
    suite = None if version is None else NGINX_SUITES.get(version[1])
    if version is None or suite is None:
        offered = ", ".join(f"{v} (Debian {s})" for v, s in NGINX_SUITES.items())
        raise DockerUnavailable(
            f"a stand-in for nginx exists only for {offered}, not for nginx:{tag}"
        )
    install = _apt_install_step("nginx")
    check_version = f"nginx -v 2>&1 | grep -q 'nginx/{re.escape(version[1])}\\.'"
    dockerfile = textwrap.dedent(
        f"""\
        FROM {base_tag(suite)}
        RUN {install} \\
            && rm -f /etc/nginx/sites-enabled/default \\
            && ln -sf /dev/stdout /var/log/nginx/access.log \\
            && ln -sf /dev/stderr /var/log/nginx/error.log \\
            && grep -q 'include /etc/nginx/conf.d/\\*.conf;' /etc/nginx/nginx.conf \\
            && test -f /usr/share/nginx/html/index.html \\
            && {check_version}
        COPY default.conf /etc/nginx/conf.d/default.conf
        EXPOSE 80
        STOPSIGNAL SIGQUIT
        CMD ["nginx", "-g", "daemon off;"]
        """
    )
    return Recipe(suite, dockerfile, {"default.conf": _NGINX_DEFAULT_SITE})
