"""Every Redis key name the service writes, built here and nowhere else.

A key is `<prefix>:{<tag>}:<rest>`:

- `<prefix>` is `APP_REDIS_KEY_PREFIX`, so several services can share one Redis and a test can
  find (and delete) exactly what one app wrote with `<prefix>:*`.
- `{<tag>}` is a Redis Cluster hash tag: the cluster hashes only the part between the braces,
  so every key one Lua script touches shares a tag, and the script runs on the one node that
  owns that slot. A user's sessions, session index and rate-limit buckets share `{<sub>}`, so
  the per-request script (session check + rate limit) is one call to one node.
- Text a client or another issuer chooses (an attempted username, a remote `sub`) appears only
  as a digest: a key name then has a bounded length and a fixed alphabet whatever was sent.
  Our own users' names are checked against `USERNAME_PATTERN` before they are ever keys.

This is the ground floor: it imports nothing of the service but a policy's name. The Lua
scripts get their key names (and, for the scripts that walk a user's sessions, the prefix of a
session key) from it as `KEYS`/`ARGV`, never by building them; each writes its keys with a TTL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .rates import DEFAULT_POLICY

# 32 hex digits (128 bits) of SHA-256: collisions between two names are out of reach, and the
# key stays short.
DIGEST_HEX_DIGITS = 32
LOGIN_TAG = "login"  # every login bucket shares one slot: the two are taken in one script


def digest(text: str) -> str:
    """A fixed-length name for any text: the first `DIGEST_HEX_DIGITS` of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_HEX_DIGITS]


def hash_tag(text: str) -> str:
    """`{text}`: Redis Cluster hashes only this part, so keys with one tag share a slot."""
    return "{" + text + "}"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """The key names under one prefix. Built once per app; each method is a string format."""

    prefix: str

    def session(self, sub: str, sid: str) -> str:
        """A session's hash (its refresh-token hashes, scopes, absolute expiry)."""
        return f"{self.prefix}:{hash_tag(sub)}:sess:{sid}"

    def session_prefix(self, sub: str) -> str:
        """What every one of a user's session keys starts with; scripts that walk the session
        index (`session_create.lua`, `session_revoke_all.lua`) append a sid to it."""
        return f"{self.prefix}:{hash_tag(sub)}:sess:"

    def session_index(self, sub: str) -> str:
        """The sorted set of a user's live sids, oldest first (the per-user cap)."""
        return f"{self.prefix}:{hash_tag(sub)}:sessions"

    def user_bucket(self, sub: str, policy: str = DEFAULT_POLICY) -> str:
        """A user's rate-limit bucket for `policy` (`APP_RATE_LIMIT`'s is `DEFAULT_POLICY`).

        In the user's slot, so the request script checks the session and takes from the
        bucket in one call."""
        suffix = "" if policy == DEFAULT_POLICY else f":{policy}"
        return f"{self.prefix}:{hash_tag(sub)}:rl{suffix}"

    def subject_bucket(self, sub: str, policy: str) -> str:
        """A remote issuer's subject's bucket: keyed by a digest, since that `sub` is any text
        its issuer chose."""
        return f"{self.prefix}:{hash_tag('sub:' + digest(sub))}:{policy}"

    def client_bucket(self, client: str, policy: str) -> str:
        """A client address's bucket (`limit_by_client`); the address is a parsed IP."""
        return f"{self.prefix}:{hash_tag('client:' + client)}:{policy}"

    def login_buckets(self, client: str, username: str) -> list[str]:
        """The two buckets a login attempt takes from: the client address's and the account's.

        The account is a digest of the attempted name (case and surrounding spaces folded, as
        users' names are), since attempted names are attacker-chosen text."""
        account = digest(username.strip().lower())
        return [
            f"{self.prefix}:{hash_tag(LOGIN_TAG)}:client:{client}",
            f"{self.prefix}:{hash_tag(LOGIN_TAG)}:account:{account}",
        ]

    def items(self, sub: str) -> str:
        """The example router's list of a user's newest items."""
        return f"{self.prefix}:{hash_tag('items:' + digest(sub))}"

    def everything(self) -> str:
        """A SCAN pattern that matches every key above (and nothing of another prefix)."""
        return f"{self.prefix}:*"

    def tagged(self, tag: str) -> str:
        """A SCAN pattern that matches every key with the hash tag `{tag}`: all of a user's
        keys for their `sub`, every login bucket for `LOGIN_TAG`."""
        return f"{self.prefix}:{hash_tag(tag)}:*"
