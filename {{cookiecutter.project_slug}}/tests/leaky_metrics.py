"""A deliberately leaky metric label, for the boundedness test's canary. Never copy this.

`label_by_raw_path()` makes the service label each request with its raw path instead of its
route's template: what much tutorial code does (`request.url.path` as a label). Every distinct
path then adds series that stay until the process exits. The canary in test_metrics.py serves
the app with this in place and requires the series count to grow; if it ever stays flat, the
boundedness test has stopped biting.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from {{ cookiecutter.package_name }} import metrics


def raw_path(scope: MutableMapping[str, Any]) -> str:
    path: str = scope["path"]
    return path  # the bug: one label value per path a client makes up


def label_by_raw_path() -> None:
    """Replace `metrics.route_of`; call it before the app is imported, so that whatever
    imported the name later gets this one."""
    metrics.route_of = raw_path
