"""Authentication's domain: access tokens, keys, passwords, users, service accounts and Redis
sessions. The HTTP side (the token endpoint, refresh and logout, the `CurrentPrincipal`
dependency) is in `api/`, above the app state that holds these parts.

How the pieces meet: `POST /auth/token` checks a password against the `UserStore`, opens a
session in Redis (`SessionStore`) and signs a short-lived access token (`TokenIssuer`). Every
protected request goes through `current_principal` (`api/security.py`), which verifies the
token (`TokenVerifier`) and asks Redis whether its session is still alive.
"""
