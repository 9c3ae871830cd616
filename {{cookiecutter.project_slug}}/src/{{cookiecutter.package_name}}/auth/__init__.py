"""Authentication: access tokens, passwords, users, Redis sessions, and the routes that use them.

How the pieces meet: `POST /auth/token` checks a password against the `UserStore`, opens a
session in Redis (`SessionStore`) and signs a short-lived access token (`TokenIssuer`). Every
protected request goes through `current_principal`, which verifies the token (`TokenVerifier`)
and asks Redis whether its session is still alive.
"""
