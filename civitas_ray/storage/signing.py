"""HMAC-signed URLs for the local backend: a capability for one method, one key, one expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Literal

from civitas_ray.storage.errors import BadSignature

Method = Literal["GET", "PUT"]
# Domain separation: the URL key is derived from the auth secret, never the secret itself,
# so a signature can never be replayed as (or reveal anything about) a JWT.
_DERIVATION_LABEL = b"civitas_ray/storage/signed-url/v1"


class UrlSigner:
    """Signs and checks `(method, key, expires)`; the signature is base64url HMAC-SHA256."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode("utf-8") if isinstance(secret, str) else secret
        if not raw:
            raise ValueError("the signing secret is empty")
        self._key = hmac.new(raw, _DERIVATION_LABEL, hashlib.sha256).digest()

    def _mac(self, method: str, key: str, expires: int) -> str:
        message = f"{method}\n{key}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, method: Method, key: str, expires: int) -> str:
        """The signature for a URL valid until the unix time `expires`."""
        return self._mac(method, key, expires)

    def verify(self, method: str, key: str, expires: int | None, signature: str | None,
               *, now: float | None = None) -> None:
        """Raise `BadSignature` unless the signature matches and has not expired."""
        if expires is None or not signature:
            raise BadSignature("The URL is not signed: 'expires' and 'signature' are required")
        expected = self._mac(method, key, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise BadSignature("The signature does not match this method, key and expiry")
        if (time.time() if now is None else now) > expires:
            raise BadSignature("The signed URL has expired")
