"""Identity of the human behind a request: JWT access tokens from the clinic's OpenID Connect
provider, verified against its published keys (``oidc``, the only module that imports PyJWT),
the keys fetched and cached (``jwks``), the claims mapped to an imagevault tenant and role
(``claims``)."""
