"""Confluent Schema Registry REST API (JSON Schema only) over the Postgres registry.

``python -m conflux.io.registry_api --port N`` serves it (the ``conflux-schema-registry``
service of the local stack; docs/schema-registry.md). Every endpoint is a thin translation to
:class:`~conflux.io.schema_registry.SchemaRegistry`: same tables, same compatibility check
(``check_compatibility``) as ``conflux contracts``. A subject name that is an alias
(``tpch.orders-value``) stands for its dataset's subject (``orders``). Errors are Confluent's
bodies, ``{"error_code": N, "message": "..."}``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import os
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conflux.contracts.compat import Mode, diff_schemas
from conflux.core.errors import IncompatibleSchemaError, SchemaError
from conflux.io.schema_registry import (NotSoftDeletedError, SoftDeletedError, UnknownSubjectError,
                                        UnknownVersionError)

log = logging.getLogger("conflux.registry_api")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
PASSWORD_ENV = "CONFLUX_SCHEMA_REGISTRY_PASSWORD"
MAX_VERSION = 2**31 - 1


class ApiError(Exception):
    """An error response: HTTP ``status`` and Confluent's ``error_code``."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def subject_not_found(name: str) -> ApiError:
    return ApiError(404, 40401, f"Subject '{name}' not found.")


def version_not_found(version) -> ApiError:
    return ApiError(404, 40402, f"Version {version} not found.")


def schema_not_found(schema_id=None) -> ApiError:
    return ApiError(404, 40403, "Schema not found" if schema_id is None
                    else f"Schema {schema_id} not found")


def invalid_level() -> ApiError:
    modes = ", ".join(m.value for m in Mode)
    return ApiError(422, 42203, f"Invalid compatibility level. Valid values are {modes}")


_SOFT = "was soft deleted. Set permanent=true to delete permanently"
_NOT_SOFT = "was not deleted first before being permanently deleted"
_DELETE_ERRORS = {(SoftDeletedError, "subject"): (40404, _SOFT),
                  (NotSoftDeletedError, "subject"): (40405, _NOT_SOFT),
                  (SoftDeletedError, "version"): (40406, _SOFT),
                  (NotSoftDeletedError, "version"): (40407, _NOT_SOFT)}


def api_error(exc: Exception, name: str, version=None) -> ApiError:
    """The Confluent error of a store exception, about subject ``name`` (as the client spelt it)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnknownSubjectError):
        return subject_not_found(name)
    if isinstance(exc, UnknownVersionError):
        return version_not_found(version)
    if isinstance(exc, SoftDeletedError):  # NotSoftDeletedError too
        code, why = _DELETE_ERRORS[type(exc), exc.what]
        where = f"Subject '{name}'" + ("" if exc.what == "subject" else f" Version {version}")
        return ApiError(404, code, f"{where} {why}")
    if isinstance(exc, IncompatibleSchemaError):
        return ApiError(409, 409, str(exc).removeprefix(f"[{exc.code}] "))
    log.exception("registry store failed")
    return ApiError(500, 50001, f"Error in the backend data store: {exc}")


# --- request parsing (pure) --------------------------------------------------------------------
def parse_version(text: str) -> int | None:
    """A version path segment: a number in [1, 2^31-1], or ``latest`` / ``-1`` (None)."""
    text = text.strip()
    if text.lower() == "latest" or text == "-1":
        return None
    if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_VERSION:
        return int(text)
    raise ApiError(422, 42202, f"The specified version '{text}' is not a valid version id. "
                   "Allowed values are between [1, 2^31-1] and the string \"latest\"")


def flag(request: Request, name: str) -> bool:
    """A boolean query parameter (``true`` in any case; clients send ``True`` too)."""
    return request.query_params.get(name, "").strip().lower() == "true"


def page(items: list, request: Request) -> list:
    """``offset`` / ``limit`` (-1: all) pagination."""
    try:
        offset = max(int(request.query_params.get("offset", 0)), 0)
        limit = int(request.query_params.get("limit", -1))
    except ValueError:
        raise ApiError(400, 400, "offset and limit must be integers") from None
    return items[offset:] if limit < 0 else items[offset:offset + limit]


def parse_schema(body: object) -> dict:
    """The JSON Schema of a register / lookup / compatibility request body, refused with 42201
    when it is not one this registry takes (JSON type only, no references, an object that
    ``conflux contracts`` can read)."""
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise ApiError(422, 42201, "Invalid schema: the request needs a 'schema' string")
    kind = body.get("schemaType") or "AVRO"  # Confluent's default when absent
    if str(kind).upper() != "JSON":
        raise ApiError(422, 42201, f"Invalid schema: schemaType {kind} is not supported; this "
                       "registry serves JSON Schema only (set schemaType to JSON)")
    if body.get("references"):
        raise ApiError(422, 42201, "Invalid schema: schema references are not supported; "
                       "inline the referenced definitions ($defs)")
    try:
        schema = json.loads(body["schema"])
    except ValueError as exc:
        raise ApiError(422, 42201, f"Invalid schema: not JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise ApiError(422, 42201, "Invalid schema: a JSON Schema object is expected")
    try:
        diff_schemas(schema, schema)  # reads it the way the compatibility check will
    except (SchemaError, RecursionError) as exc:
        raise ApiError(422, 42201, f"Invalid schema: {exc}") from None
    return schema


def parse_level(body: object) -> Mode:
    """The compatibility level of a config update (``compatibility`` or ``compatibilityLevel``)."""
    level = body.get("compatibility", body.get("compatibilityLevel")) if isinstance(body, dict) else None
    try:
        return Mode.parse(level if isinstance(level, str) else "")
    except ValueError:
        raise invalid_level() from None


def check_basic(header: str | None, user: str, password: str) -> bool:
    """Whether an ``Authorization`` header carries these basic credentials."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        got_user, sep, got_password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and (hmac.compare_digest(got_user.encode(), user.encode())
                          & hmac.compare_digest(got_password.encode(), password.encode()))


# --- the application ---------------------------------------------------------------------------
def reply(content, status: int = 200) -> Response:
    return JSONResponse(content, status_code=status, media_type=CONTENT_TYPE)


def registered(name: str, version, body: bool = True) -> dict:
    """A version as Confluent returns it (``schemaType`` always: clients default to AVRO)."""
    out = {"subject": name, "version": version.version, "id": version.schema_id,
           "schemaType": "JSON"}
    if body:
        out["schema"] = json.dumps(version.schema)
    return out


def create_app(store, auth: tuple[str, str] | None = None) -> Starlette:
    """The API over ``store`` (a SchemaRegistry, or a fake with its methods); ``auth``:
    ``(user, password)`` required as HTTP basic credentials on every request."""

    def endpoint(fn: Callable) -> Callable:
        async def handle(request: Request) -> Response:
            if auth and not check_basic(request.headers.get("authorization"), *auth):
                return JSONResponse({"error_code": 401, "message": "Unauthorized"}, 401,
                                    headers={"WWW-Authenticate": 'Basic realm="conflux-schema-registry"'},
                                    media_type=CONTENT_TYPE)
            body = None
            if request.method in ("POST", "PUT"):
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw.strip() else {}
                except ValueError:
                    return reply({"error_code": 400, "message": "the request body is not JSON"}, 400)
            name = request.path_params.get("subject", "")
            version = request.path_params.get("version")
            try:
                return reply(await run_in_threadpool(fn, request, body))
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error body
                err = api_error(exc, name, version)
                return reply({"error_code": err.code, "message": err.message}, err.status)
        return handle

    def subject_of(request: Request) -> tuple[str, str]:
        """(name as requested, the subject it stands for)."""
        name = request.path_params["subject"]
        return name, store.resolve(name)

    # --- subjects and versions -------------------------------------------------------------
    def list_subjects(request, _):
        only = flag(request, "deleted_only")
        live = set(store.subjects())
        names = set(store.subjects(deleted=True)) - live if only else (
            set(store.subjects(deleted=True)) if flag(request, "deleted") else live)
        names |= {alias for alias, subject in store.aliases().items() if subject in names}
        prefix = request.query_params.get("subjectPrefix", "")
        return page(sorted(n for n in names if n.startswith(prefix)), request)

    def list_versions(request, _):
        name, subject = subject_of(request)
        found = store.versions(subject, deleted=True)
        if not found:
            raise subject_not_found(name)
        if flag(request, "deleted_only"):
            found = [v for v in found if v.deleted]
        elif not flag(request, "deleted"):
            found = [v for v in found if not v.deleted]
            if not found:
                raise subject_not_found(name)
        return page([v.version for v in found], request)

    def get_version(request, _):
        name, subject = subject_of(request)
        number = parse_version(request.path_params["version"])
        version = store.get(subject, number)
        if version.deleted and not flag(request, "deleted"):
            raise version_not_found(number)
        return version

    def get_version_response(request, body):
        return registered(request.path_params["subject"], get_version(request, body))

    def get_version_schema(request, body):
        return get_version(request, body).schema

    def register(request, body):
        name, subject = subject_of(request)
        schema = parse_schema(body)
        return {"id": store.register(subject, schema).version.schema_id}

    def lookup(request, body):
        name, subject = subject_of(request)
        schema = parse_schema(body)
        found = store.lookup(subject, schema, deleted=flag(request, "deleted"))
        if found is None:
            if not store.versions(subject, deleted=True):
                raise subject_not_found(name)
            raise schema_not_found()
        return registered(name, found)

    def delete_subject(request, _):
        name, subject = subject_of(request)
        return store.delete_subject(subject, permanent=flag(request, "permanent"))

    def delete_version(request, _):
        name, subject = subject_of(request)
        number = parse_version(request.path_params["version"])
        return store.delete_version(subject, number, permanent=flag(request, "permanent"))

    # --- schemas by id ---------------------------------------------------------------------
    def schema_id(request) -> int:
        text = request.path_params["id"]
        if not (text.isascii() and text.isdigit()):
            raise schema_not_found(text)
        return int(text)

    def get_schema(request, _):
        sid = schema_id(request)
        schema = store.by_id(sid)
        if schema is None:
            raise schema_not_found(sid)
        return {"schema": json.dumps(schema), "schemaType": "JSON"}

    def usages(request) -> list[tuple[str, int]]:
        sid = schema_id(request)
        pairs = store.usages(sid, deleted=flag(request, "deleted"))
        if not pairs and store.by_id(sid) is None:
            raise schema_not_found(sid)
        names: dict[str, list[str]] = {}
        for alias, subject in store.aliases().items():
            names.setdefault(subject, []).append(alias)
        wanted = request.query_params.get("subject")
        found = sorted({(n, v) for s, v in pairs for n in [s, *names.get(s, [])]})
        return [(n, v) for n, v in found if wanted in (None, n)]

    def schema_subjects(request, _):
        return page(sorted({n for n, _ in usages(request)}), request)

    def schema_versions(request, _):
        return page([{"subject": n, "version": v} for n, v in usages(request)], request)

    # --- compatibility ---------------------------------------------------------------------
    def compatibility(request, body):
        """Against the subject's history as its mode says (no version in the path), or
        against one version (``latest``: the newest live one; none registered: compatible)."""
        name, subject = subject_of(request)
        schema = parse_schema(body)
        text = request.path_params.get("version")
        number = None if text is None else parse_version(text)
        if text is not None and number is None:
            live = store.versions(subject)
            number = live[-1].version if live else None
            if number is None:
                return {"is_compatible": True, "messages": []}
        elif number is not None and store.get(subject, number).deleted:
            raise version_not_found(number)
        problems = store.check(subject, schema, number)
        out: dict = {"is_compatible": not problems}
        if flag(request, "verbose"):
            out["messages"] = [str(p) for p in problems]
        return out

    # --- config and mode -------------------------------------------------------------------
    def get_global_config(request, _):
        return {"compatibilityLevel": store.global_mode().value}

    def put_global_config(request, body):
        level = parse_level(body)
        store.set_global_mode(level)
        return {"compatibility": level.value}

    def delete_global_config(request, _):
        old = store.global_mode()
        store.set_global_mode(Mode.BACKWARD)
        return {"compatibilityLevel": old.value}

    def get_config(request, _):
        name, subject = subject_of(request)
        level = store.subject_mode(subject)
        if level is None and flag(request, "defaultToGlobal"):
            level = store.global_mode()
        if level is None:
            raise ApiError(404, 40408, f"Subject '{name}' does not have subject-level "
                           "compatibility configured")
        return {"compatibilityLevel": level.value}

    def put_config(request, body):
        name, subject = subject_of(request)
        level = parse_level(body)
        store.set_mode(subject, level)
        return {"compatibility": level.value}

    def delete_config(request, _):
        name, subject = subject_of(request)
        old = store.clear_mode(subject)
        if old is None:
            raise subject_not_found(name)
        return {"compatibilityLevel": old.value}

    def get_mode(request, _):
        return {"mode": "READWRITE"}

    def root(request, _):
        return {}

    def types(request, _):
        return ["JSON"]

    def route(path: str, fn: Callable, *methods: str) -> Route:
        return Route(path, endpoint(fn), methods=list(methods or ["GET"]))

    return Starlette(routes=[
        route("/", root),
        route("/subjects", list_subjects),
        route("/subjects/{subject:str}/versions", list_versions),
        route("/subjects/{subject:str}/versions", register, "POST"),
        route("/subjects/{subject:str}/versions/{version:str}", get_version_response),
        route("/subjects/{subject:str}/versions/{version:str}", delete_version, "DELETE"),
        route("/subjects/{subject:str}/versions/{version:str}/schema", get_version_schema),
        route("/subjects/{subject:str}", lookup, "POST"),
        route("/subjects/{subject:str}", delete_subject, "DELETE"),
        route("/schemas/types", types),
        route("/schemas/ids/{id:str}", get_schema),
        route("/schemas/ids/{id:str}/subjects", schema_subjects),
        route("/schemas/ids/{id:str}/versions", schema_versions),
        route("/compatibility/subjects/{subject:str}/versions", compatibility, "POST"),
        route("/compatibility/subjects/{subject:str}/versions/{version:str}", compatibility, "POST"),
        route("/config", get_global_config),
        route("/config", put_global_config, "PUT"),
        route("/config", delete_global_config, "DELETE"),
        route("/config/{subject:str}", get_config),
        route("/config/{subject:str}", put_config, "PUT"),
        route("/config/{subject:str}", delete_config, "DELETE"),
        route("/mode", get_mode),
        route("/mode/{subject:str}", get_mode),
    ])


def credentials(user: str | None) -> tuple[str, str] | None:
    """Basic-auth credentials: ``user`` with the password from the environment (a secret:
    never on a command line), or None (no authentication) when ``user`` is unset."""
    if not user:
        return None
    password = os.environ.get(PASSWORD_ENV) or ""
    if not password:
        from conflux.core.errors import ConfigError

        raise ConfigError(f"CONFLUX_SCHEMA_REGISTRY_USER is set but {PASSWORD_ENV} is not")
    return user, password


def main(argv: list[str] | None = None) -> int:
    """Serve the API until terminated."""
    import uvicorn

    from conflux.core.settings import Settings
    from conflux.io.schema_registry import SchemaRegistry

    parser = argparse.ArgumentParser(prog="python -m conflux.io.registry_api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    store = SchemaRegistry(settings.postgres_url)
    store.ensure_schema()
    auth = credentials(settings.schema_registry_user)
    log.info("schema registry API on http://%s:%d (%s)", args.host, args.port,
             f"basic auth, user {auth[0]}" if auth else "no authentication")
    uvicorn.run(create_app(store, auth), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
