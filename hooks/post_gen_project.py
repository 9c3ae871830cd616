"""Finish the generated project: record the answers, keep the lock for the chosen Python, fill in
secrets, prune unchosen files.

Runs inside the new project directory, offline. Secrets come from `secrets` and are written to
git-ignored files (`.env`, `keys/`) with owner-only permissions; nothing secret is printed.

Key pairs for RS256/ES256 are made with the `cryptography` package when cookiecutter's Python has
it, otherwise with the `openssl` command; with neither, the bake stops and says so.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# Cookiecutter renders this file with Jinja before running it; this line then holds the answers.
ANSWERS_JSON = r"""{{ cookiecutter | jsonify }}"""

KEY_DIR = "keys"
PRIVATE_KEY_FILE = f"{KEY_DIR}/jwt-private.pem"
PUBLIC_KEY_FILE = f"{KEY_DIR}/jwt-public.pem"
RSA_KEY_BITS = 3072  # as the generated auth/keys.py's RSA_KEY_BITS, for every later key
SECRET_BYTES = 48  # HS256 needs at least 32 (the hash size, RFC 7518 section 3.2)
# The port of the README quickstart's redis-server, which `.env` points the service at: not
# Redis's 6379, where a distribution's redis-server (`apt-get install` starts one) or another
# project's may be listening already. `redis-server --daemonize yes` exits 0 and says nothing
# when its port is taken, so on 6379 the quickstart would quietly use someone else's Redis.
LOCAL_REDIS_PORT = 6390
PLACEHOLDER_SECRET = "change-me-to-a-long-random-secret"  # settings.py refuses it everywhere
# The template keeps one lock per python_version (`make lock` at its root writes them), copied
# unrendered; each names the project this, and the bake puts its own name in.
LOCKS_DIR = "locks"
LOCK_PLACEHOLDER = 'name = "template-lock-placeholder"'


class HookError(RuntimeError):
    """A problem the user must fix; the message is the one line they see."""


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def public_answers(context: Mapping[str, object]) -> dict[str, object]:
    """The answers worth recording for update tools (cruft, cookiecutter replay)."""
    kept = {key: value for key, value in context.items() if not key.startswith("_")}
    if "_template" in context:
        kept["_template"] = context["_template"]
    return kept


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, without a moment of wider permissions."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


# The generated package makes its later key pairs (`rotate-keys`) with `new_key_pair` in
# auth/keys.py, the same routine as `key_pair_with_cryptography` below; this copy stays here
# because this hook runs in cookiecutter's Python, before the project's dependencies are
# installed: it cannot import that module, which imports `jose` and the project's settings,
# and it must also work with no `cryptography` at all (`openssl`). tests/test_answers.py proves
# that all three make keys of one kind: the algorithm, the RSA size or the curve, PKCS#8 and
# SubjectPublicKeyInfo PEM.
def key_pair_with_cryptography(algorithm: str) -> tuple[str, str]:
    """Return (private PEM, public PEM); raises ImportError when `cryptography` is absent."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS256":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem.decode(), public_pem.decode()


def key_pair_with_openssl(algorithm: str) -> tuple[str, str]:
    """Return (private PEM, public PEM) made by the `openssl` command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl")
    if algorithm == "RS256":
        options = ["-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{RSA_KEY_BITS}"]
    else:
        options = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    private_pem = subprocess.run(
        [openssl, "genpkey", *options], check=True, capture_output=True, text=True
    ).stdout
    public_pem = subprocess.run(
        [openssl, "pkey", "-pubout"], input=private_pem, check=True, capture_output=True, text=True
    ).stdout
    return private_pem, public_pem


def new_key_pair(algorithm: str) -> tuple[str, str]:
    try:
        return key_pair_with_cryptography(algorithm)
    except ImportError:
        pass
    try:
        return key_pair_with_openssl(algorithm)
    except (FileNotFoundError, subprocess.CalledProcessError) as error:
        raise HookError(
            f"jwt_algorithm: {algorithm} needs a key pair, but neither the 'cryptography' package "
            "nor a working 'openssl' command is available; install one, or choose HS256"
        ) from error


def env_lines(algorithm: str, jwt_secret: str | None, redis_password: str) -> list[str]:
    """The settings a fresh checkout needs; `jwt_secret` is None for RS256/ES256."""
    lines = ["APP_ENVIRONMENT=development"]
    if jwt_secret is not None:
        lines.append(f"APP_JWT_SECRET={jwt_secret}")
    else:
        lines.append(f"APP_JWT_PRIVATE_KEY_FILE={PRIVATE_KEY_FILE}")
        lines.append(f"APP_JWT_PUBLIC_KEY_FILE={PUBLIC_KEY_FILE}")
    lines.append("# The README quickstart's redis-server (compose.yaml sets its own APP_REDIS_URL).")
    lines.append(f"APP_REDIS_URL=redis://127.0.0.1:{LOCAL_REDIS_PORT}/0")
    lines.append(
        "# The password of the Redis that compose.yaml starts (not used by a local redis-server)."
    )
    lines.append(f"REDIS_PASSWORD={redis_password}")
    return lines


def write_secrets(project: Path, algorithm: str) -> None:
    """Write `.env` with fresh secrets (and the key pair), and `.env.example` with placeholders."""
    header = "# Local settings for this checkout. Never commit this file (.gitignore lists it).\n"
    if algorithm.startswith("HS"):
        jwt_secret: str | None = new_secret()
    else:
        jwt_secret = None
        private_pem, public_pem = new_key_pair(algorithm)
        write_private(project / PRIVATE_KEY_FILE, private_pem)
        (project / PUBLIC_KEY_FILE).write_text(public_pem, encoding="utf-8")
    write_private(
        project / ".env", header + "\n".join(env_lines(algorithm, jwt_secret, new_secret())) + "\n"
    )

    example_secret = PLACEHOLDER_SECRET if jwt_secret is not None else None
    example = env_lines(algorithm, example_secret, "change-me")
    (project / ".env.example").write_text(
        "# Copy to .env and replace every change-me value (python -c 'import secrets; "
        "print(secrets.token_urlsafe(48))').\n" + "\n".join(example) + "\n",
        encoding="utf-8",
    )


def remove_ci_files(project: Path, ci: str) -> None:
    if ci != "github":
        shutil.rmtree(project / ".github")
    if ci != "gitlab":
        (project / ".gitlab-ci.yml").unlink()


def choose_license(project: Path, license_name: str) -> None:
    licenses = project / "licenses"
    (licenses / f"{license_name}.txt").replace(project / "LICENSE")
    shutil.rmtree(licenses)


def choose_lock(project: Path, python_version: str, project_slug: str) -> None:
    """Keep the lock made for this `python_version` as `uv.lock`, under the project's name.

    A slug is already a normalized distribution name, as uv writes it. The lock is current for
    the rendered pyproject.toml: nothing else in it depends on the answers (tests/test_locks.py
    checks every version's with `uv lock --check`)."""
    locks = project / LOCKS_DIR
    lock = locks / f"uv-{python_version}.lock"
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HookError(
            f"python_version: the template has no lock for {python_version} "
            "(run `make lock` at the template's root)"
        ) from None
    if text.count(LOCK_PLACEHOLDER) != 1:
        raise HookError(
            f"python_version: the template's {lock.name} does not name the project once"
        )
    new_name = f'name = "{project_slug}"'
    (project / "uv.lock").write_text(text.replace(LOCK_PLACEHOLDER, new_name), encoding="utf-8")
    shutil.rmtree(locks)


def record_answers(project: Path, context: Mapping[str, object]) -> None:
    text = json.dumps(public_answers(context), indent=2, sort_keys=True) + "\n"
    (project / ".cookiecutter.json").write_text(text, encoding="utf-8")


def next_steps(project: Path) -> str:
    """What to type next: `cd` into the project, then the README's first commands as they are.

    Read from the rendered README, so the two cannot disagree. The README holds no secret.
    """
    readme = (project / "README.md").read_text(encoding="utf-8")
    quickstart = re.search(
        r"^## From zero to a logged-in request$.*?^```sh$\n(.*?)^```$", readme, re.DOTALL | re.M
    )
    lines = [
        f"Next steps for {project} (its README.md, 'From zero to a logged-in request'):",
        f"  cd {project}",
    ]
    if quickstart is None:
        lines.append("  then follow README.md")
    else:
        lines.extend(f"  {line}" for line in quickstart[1].splitlines())
    return "\n".join(lines) + "\n"


def main() -> int:
    context = json.loads(ANSWERS_JSON)
    project = Path.cwd()
    try:
        record_answers(project, context)
        choose_lock(project, str(context["python_version"]), str(context["project_slug"]))
        write_secrets(project, str(context["jwt_algorithm"]))
        remove_ci_files(project, str(context["ci"]))
        choose_license(project, str(context["license"]))
    except HookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(next_steps(project), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
