"""Airflow Connection fields -> what the ETL needs (kept free of Airflow so that it is testable alone).

`fhir_<site>`: the FHIR base URL in `host` (a full http(s) URL) or in extra `base_url`; extra `auth`
none | basic | bearer | smart. basic: login and password. bearer: the token in password. smart: client
id in login, extra `kid`, the private key PEM in password or extra `private_key_file`, optional extra
`alg`, `scope`, `token_url`. Extra `ca_bundle` replaces the system trust store (TLS is always verified).

`dlm_registry`: a postgres connection (host, port, schema = database, login, password), a sqlite
connection (host = the file path), or any SQLAlchemy URL in extra `sqlalchemy_url`.
"""
from __future__ import annotations

import sqlalchemy as sa

from etl.extract.auth import auth_from_env
from etl.extract.errors import ExtractError


class ConnectionConfigError(ExtractError):
    """A connection that cannot work as configured: retrying will not help."""


def fhir_endpoint(conn_id: str, host: str | None, login: str | None, password: str | None,
                  extra: dict) -> tuple[str, object, bool | str]:
    """(base URL, auth, TLS verify) of a FHIR connection."""
    base = (extra.get("base_url") or host or "").strip()
    if not base.startswith(("https://", "http://")):
        raise ConnectionConfigError(f"connection {conn_id}: put the FHIR base URL (https://...) in host or extra "
                                    "base_url")
    mode = str(extra.get("auth") or "none")
    env = {"DLMREG_FHIR_AUTH": mode, "DLMREG_FHIR_USERNAME": login or "", "DLMREG_FHIR_PASSWORD": password or "",
           "DLMREG_FHIR_TOKEN": password or "", "DLMREG_SMART_CLIENT_ID": login or "",
           "DLMREG_SMART_KID": str(extra.get("kid") or ""),
           "DLMREG_SMART_PRIVATE_KEY": password or "",
           "DLMREG_SMART_PRIVATE_KEY_FILE": str(extra.get("private_key_file") or ""),
           "DLMREG_SMART_ALG": str(extra.get("alg") or ""), "DLMREG_SMART_SCOPE": str(extra.get("scope") or ""),
           "DLMREG_SMART_TOKEN_URL": str(extra.get("token_url") or "")}
    try:
        auth = auth_from_env(env)
    except ExtractError as exc:  # name the connection, not the environment variables
        raise ConnectionConfigError(f"connection {conn_id} (auth {mode}): {exc}".replace("DLMREG_", "")) from None
    return base, auth, str(extra["ca_bundle"]) if extra.get("ca_bundle") else True


def registry_url(conn_id: str, conn_type: str | None, host: str | None, login: str | None, password: str | None,
                 port: int | None, schema: str | None, extra: dict) -> str:
    """A SQLAlchemy URL (with its password: keep it out of logs) for the registry connection."""
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    kind = (conn_type or "").lower()
    if kind in ("postgres", "postgresql"):
        return sa.URL.create("postgresql+psycopg", username=login or None, password=password or None,
                             host=host or None, port=port or None, database=schema or None).render_as_string(
            hide_password=False)
    if kind == "sqlite" and host:
        return f"sqlite:///{host}"
    raise ValueError(f"connection {conn_id}: a postgres or sqlite connection, or extra sqlalchemy_url, is needed")
