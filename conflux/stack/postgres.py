"""PostgreSQL for Dagster's instance storage and the platform's own schemas.

Choice: Debian's ``postgresql`` package (binaries under ``/usr/lib/postgresql/<ver>/bin``). It is
on this kind of machine already, it is the server operators run in production, and it needs no
download at start; when it is missing and we are root the tooling installs it with apt-get.
(pip-packaged servers exist but pin old builds and still need the same root→user dance.)

The cluster is throwaway: initdb'd under ``$CONFLUX_HOME/postgres`` with trust auth, listening on
127.0.0.1 only (no unix socket). Postgres refuses to run as root, so as root the server runs as
the ``postgres`` system user that the Debian package creates. ``CONFLUX_POSTGRES_URL`` switches
all of this off and uses an existing server instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
from pathlib import Path

import psycopg

from conflux.core.errors import StackError
from conflux.stack.service import Service, run_checked

DATABASE = "conflux"
PLATFORM_SCHEMAS = ("ops",)


def find_pg_bin(env_bin: str | None = None) -> Path | None:
    """The newest Debian PostgreSQL bin folder (or ``CONFLUX_PG_BIN``)."""
    if env_bin:
        return Path(env_bin)
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / "postgres").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def install_pg() -> Path:
    """Install Debian's postgresql package (root only); returns its bin folder."""
    from conflux.stack.apt import APT_LOG, apt_install

    apt_install(["postgresql"], who="postgres",
                instead="install it (sudo apt-get install postgresql) or set CONFLUX_POSTGRES_URL")
    found = find_pg_bin()
    if found is None:
        raise StackError(f"postgres: installed, yet no server under /usr/lib/postgresql; see {APT_LOG}")
    return found


def server_args(data: Path, host: str, port: int) -> list[str]:
    """Settings passed on the command line (pure: tested without a server)."""
    settings = {
        "listen_addresses": host,
        "port": str(port),
        "unix_socket_directories": "",
        "max_connections": "200",
        "shared_buffers": "256MB",
        "log_min_messages": "warning",
        "log_line_prefix": "%m [%p] ",
    }
    args = ["-D", str(data)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    return args


class Postgres(Service):
    name = "postgres"
    start_timeout = 60.0
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for clients to leave

    @property
    def port(self) -> int:
        return self.settings.pg_port

    @property
    def data_dir(self) -> Path:
        return self.settings.pg_dir / "data"

    @property
    def user(self) -> str | None:  # type: ignore[override]
        return "postgres" if os.geteuid() == 0 else None

    def marker(self) -> str:
        return f"postgres -D {self.data_dir}"

    def _bin(self) -> Path:
        return find_pg_bin(os.environ.get("CONFLUX_PG_BIN")) or install_pg()

    def _own(self, path: Path) -> None:
        """As root, hand ``path`` to the postgres user (the server refuses root)."""
        if self.user is None:
            return
        entry = pwd.getpwnam(self.user)
        for p in [path, *path.rglob("*")]:
            os.chown(p, entry.pw_uid, entry.pw_gid)

    def _check_reachable(self, path: Path) -> None:
        if self.user is None:
            return
        self._own(path)
        if not run_as_can_enter(self.user, path):
            raise StackError(
                f"postgres: the server runs as user '{self.user}' (it refuses root) and cannot "
                f"reach {path}; put CONFLUX_HOME under a folder that user can enter")

    def prepare(self) -> None:
        pg_bin = self._bin()
        self.settings.pg_dir.mkdir(parents=True, exist_ok=True)
        self._check_reachable(self.settings.pg_dir)  # before initdb, whose error is cryptic
        if not (self.data_dir / "PG_VERSION").exists():
            # never initialised, or initdb died half-way: start from an empty folder
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir.mkdir(parents=True)
            self._own(self.settings.pg_dir)
            run_checked([str(pg_bin / "initdb"), "-D", str(self.data_dir), "-U", "conflux",
                         "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                        what="postgres: initdb", log=self.log, timeout=120, user=self.user,
                        cwd=self.settings.pg_dir)
        self._own(self.settings.pg_dir)
        self._check_reachable(self.data_dir)
        # the log file is opened by us (root); the server only writes to the inherited fd

    def cwd(self) -> Path:
        return self.settings.pg_dir

    def command(self) -> list[str]:
        return [str(self._bin() / "postgres"),
                *server_args(self.data_dir, self.settings.bind_host, self.port)]

    def _admin_url(self) -> str:
        return f"postgresql://conflux@{self.settings.bind_host}:{self.port}/postgres"

    def healthy(self) -> bool:
        try:
            with psycopg.connect(self._admin_url(), connect_timeout=2) as conn:
                conn.execute("select 1")
            return True
        except psycopg.Error:
            return False

    def after_start(self) -> None:
        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (DATABASE,)).fetchone()
            if not exists:
                conn.execute(f'create database "{DATABASE}"')
        ensure_platform_schemas(self.settings.postgres_url)

    def drop_platform_database(self) -> None:
        """For ``stack reset``: drop and recreate the platform database (server must run)."""
        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'drop database if exists "{DATABASE}" with (force)')
            conn.execute(f'create database "{DATABASE}"')
        ensure_platform_schemas(self.settings.postgres_url)


class ExternalPostgres(Service):
    """An existing server given by ``CONFLUX_POSTGRES_URL``: checked, never started or stopped."""

    name = "postgres"

    def marker(self) -> str:
        return "external"

    def command(self) -> list[str]:
        return []

    def healthy(self) -> bool:
        try:
            with psycopg.connect(self.settings.postgres_url, connect_timeout=3) as conn:
                conn.execute("select 1")
            return True
        except psycopg.Error:
            return False

    def describe(self) -> str:
        return "external (CONFLUX_POSTGRES_URL)"

    def status(self):
        from conflux.stack.service import ServiceStatus

        return ServiceStatus(self.name, self.healthy(), None, self.describe())

    def up(self) -> str:
        if not self.healthy():
            raise StackError("postgres: the server in CONFLUX_POSTGRES_URL does not answer")
        ensure_platform_schemas(self.settings.postgres_url)
        return "postgres: using the external server from CONFLUX_POSTGRES_URL"

    def down(self) -> str:
        return "postgres: external server left running"


def run_as_can_enter(user: str, path: Path) -> bool:
    """True when ``user`` can traverse every parent of ``path``."""
    entry = pwd.getpwnam(user)
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == entry.pw_uid:
            continue
        if not st.st_mode & 0o001 and not (st.st_gid == entry.pw_gid and st.st_mode & 0o010):
            return False
    return True


def ensure_platform_schemas(url: str) -> None:
    """Create the platform's schemas (idempotent)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        for schema in PLATFORM_SCHEMAS:
            conn.execute(f'create schema if not exists "{schema}"')
