"""Validate the answers before cookiecutter writes a single file.

This hook only validates. A bad answer stops the bake with one line on stderr that names the
field and says what would be accepted, for example:

    error: rate_limit: '100/min' is not a rate; use N/second, N/minute or N/hour (e.g. 100/minute)

The functions take plain values so the template's tests can import and call them directly.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from collections.abc import Callable, Mapping

# Cookiecutter renders this file with Jinja before running it; this line then holds the answers.
ANSWERS_JSON = r"""{{ cookiecutter | jsonify }}"""

CHOICES = {
    "python_version": ("3.14", "3.15", "3.13", "3.12", "3.11"),
    "jwt_algorithm": ("HS256", "RS256", "ES256"),
    "ci": ("github", "gitlab", "none"),
    "license": ("MIT", "Apache-2.0", "Proprietary"),
}

# Import names the generated package must not shadow: it would hide the real library.
TAKEN_IMPORT_NAMES = frozenset(
    {
        "anyio",
        "argon2",
        "fastapi",
        "httpx",
        "jose",
        "pydantic",
        "pydantic_settings",
        "pytest",
        "redis",
        "starlette",
        "tests",
        "uvicorn",
    }
)

SLUG = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
PACKAGE = re.compile(r"[a-z_][a-z0-9_]*")
EMAIL = re.compile(r"[^@\s\"\\]+@[^@\s\"\\]+\.[^@\s\"\\]+")
# The rules below are those of the generated code the answers are written into, copied: this
# hook runs before the project exists and cannot import it (and, run by cruft, is not told
# where the template is). tests/test_answers.py proves each copy agrees with its original, and
# bakes and serves the bounds.
#
# `rate_limit` becomes the default of the service's `Rate.from_string` (`RATE_PATTERN` in the
# generated package's rates.py): this is that pattern. Only the answer as written is taken;
# from_string would also strip surrounding spaces, which an environment variable may carry.
RATE = re.compile(r"([1-9][0-9]{0,8})/(second|minute|hour)")
# `access_token_ttl_seconds` is written into settings.py as a Python int literal
# (`Field(default=<answer>, gt=0)`): plain ASCII digits and no leading zero, or the generated
# settings.py would not compile (`0900`) or not be Python at all (`٣`).
SECONDS = re.compile(r"[1-9][0-9]*")
# A limit of the template's own, not of the generated code (APP_ACCESS_TOKEN_TTL_SECONDS may be
# longer): the lifetime a new project starts with is short, as the README's answers table says.
MAX_ACCESS_TOKEN_TTL_SECONDS = 24 * 60 * 60  # one day; access tokens should be short-lived
UNSAFE_TEXT = re.compile(r"[\"\\\x00-\x1f\x7f{}]")  # breaks TOML/YAML strings or Jinja


class InvalidAnswer(ValueError):
    """An answer the template cannot use; the message is the one line the user sees."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def check_text(field: str, value: str, max_length: int = 120) -> None:
    if not value.strip():
        raise InvalidAnswer(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidAnswer(field, f"is longer than {max_length} characters")
    if UNSAFE_TEXT.search(value):
        raise InvalidAnswer(
            field,
            f"{value!r} contains a quote, backslash, brace or control character; use plain text",
        )


def check_project_slug(value: str) -> None:
    if not SLUG.fullmatch(value):
        raise InvalidAnswer(
            "project_slug",
            f"{value!r} is not a valid distribution name here; use lowercase letters, digits and "
            "single hyphens, starting with a letter (e.g. auth-service)",
        )


def check_package_name(value: str) -> None:
    if not PACKAGE.fullmatch(value):
        raise InvalidAnswer(
            "package_name",
            f"{value!r} is not a Python identifier; use lowercase letters, digits and underscores, "
            "not starting with a digit (e.g. auth_service)",
        )
    if keyword.iskeyword(value) or keyword.issoftkeyword(value):
        raise InvalidAnswer("package_name", f"{value!r} is a Python keyword; choose another name")
    if value in sys.stdlib_module_names or value in TAKEN_IMPORT_NAMES:
        raise InvalidAnswer(
            "package_name",
            f"{value!r} would shadow a module the service imports; choose another name",
        )


def check_email(value: str) -> None:
    if not EMAIL.fullmatch(value):
        raise InvalidAnswer(
            "author_email", f"{value!r} is not an email address (e.g. you@example.com)"
        )


def check_choice(field: str, value: str) -> None:
    accepted = CHOICES[field]
    if value not in accepted:
        raise InvalidAnswer(field, f"{value!r} is not one of {', '.join(accepted)}")


def check_access_token_ttl(value: str) -> None:
    field = "access_token_ttl_seconds"
    if not SECONDS.fullmatch(value):
        raise InvalidAnswer(
            field, f"{value!r} is not a positive whole number of seconds (e.g. 900)"
        )
    if int(value) > MAX_ACCESS_TOKEN_TTL_SECONDS:
        raise InvalidAnswer(
            field, f"{value} is more than a day; access tokens must be short-lived (e.g. 900)"
        )


def check_rate(field: str, value: str) -> None:
    if not RATE.fullmatch(value):
        raise InvalidAnswer(
            field, f"{value!r} is not a rate; use N/second, N/minute or N/hour (e.g. 100/minute)"
        )


CHECKS: dict[str, Callable[[str], None]] = {
    "project_name": lambda value: check_text("project_name", value, max_length=80),
    "project_slug": check_project_slug,
    "package_name": check_package_name,
    "description": lambda value: check_text("description", value, max_length=200),
    "author_name": lambda value: check_text("author_name", value, max_length=80),
    "author_email": check_email,
    "python_version": lambda value: check_choice("python_version", value),
    "jwt_algorithm": lambda value: check_choice("jwt_algorithm", value),
    "access_token_ttl_seconds": check_access_token_ttl,
    "rate_limit": lambda value: check_rate("rate_limit", value),
    "ci": lambda value: check_choice("ci", value),
    "license": lambda value: check_choice("license", value),
}


def validate(answers: Mapping[str, object]) -> None:
    """Raise `InvalidAnswer` for the first answer the template cannot use."""
    for field, check in CHECKS.items():
        value = answers.get(field)
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise InvalidAnswer(field, "is missing or not text")
        check(str(value))


def main() -> int:
    try:
        validate(json.loads(ANSWERS_JSON))
    except InvalidAnswer as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
