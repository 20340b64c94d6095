"""Bearer tokens (JWT) checked against an AE registry entry: one validation for every interface.

DICOM User Identity Negotiation (type 5, :mod:`pacskit.server.access`) and the DICOMweb add-in's
``Authorization: Bearer`` both call :func:`verify_jwt`, so a token valid on one is valid on the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacskit.config.aetitles import RemoteAE


def verify_jwt(token: bytes, ae: RemoteAE) -> str | None:
    """``None`` when ``token`` is a valid JWT for ``ae``, else why not (for the log; never the token).

    Signature (HS256 with a shared secret or RS256 with a PEM public key), ``exp`` required and in
    the future, ``nbf``/``iat`` honoured, ``aud`` when the entry sets ``jwt_audience``, ``sub`` equal
    to ``username`` when the entry sets one."""
    try:
        import jwt
    except ImportError:
        return "JWT user identity needs PyJWT on the server: pip install 'pacskit[jwt]'"

    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        return "token is not ASCII"
    options: dict[str, Any] = {"require": ["exp"], "verify_aud": ae.jwt_audience is not None}
    try:
        claims = jwt.decode(
            text,
            key=ae.jwt_key or "",
            algorithms=[ae.jwt_algorithm],
            audience=ae.jwt_audience,
            options=options,
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        return "token expired"
    except jwt.InvalidSignatureError:
        return "token signature invalid"
    except jwt.PyJWTError as exc:
        return f"token invalid: {type(exc).__name__}: {exc}"
    if ae.username is not None and claims.get("sub") != ae.username:
        return f"token subject {str(claims.get('sub'))[:64]!r} is not {ae.username!r}"
    return None
