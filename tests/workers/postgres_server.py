"""A real PostgreSQL server in a temporary folder on loopback, for the tracking-server tests.

    pg = PostgresServer().start()                    # initdb + pg_ctl, password login (scram-sha-256),
                                                     # and the database mlflow (the image's POSTGRES_DB)
    pg.run_sql(Path("docker/postgres-init.sql"))     # as the postgres image runs its init scripts
    pg.uri("mlflow")                                 # postgresql://mlflow@127.0.0.1:<port>/mlflow
    pg.env                                           # PGPASSWORD, as docker/compose.yaml gives it
    pg.stop()                                        # and its folder is removed

Debian's binaries (apt-get install postgresql; scripts/setup.sh --test installs them). PostgreSQL
refuses to run as root, so as root the cluster belongs to the ``postgres`` user Debian creates.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.workers.tracking_mlflow_server import free_port

USER = "mlflow"  # the database role, as docker/compose.yaml names it
PASSWORD = "test-password"


def bin_dir():
    """The folder of initdb/pg_ctl/psql, or None where PostgreSQL's server binaries are absent."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "pg_ctl"), os.X_OK) and os.access(os.path.join(candidate, "initdb"),
                                                                                os.X_OK):
            return candidate
    found = shutil.which("pg_ctl")
    return os.path.dirname(found) if found and shutil.which("initdb") else None


def why_absent():
    """The reason to skip, or None when a server can be started here."""
    if bin_dir() is None:
        return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to own the cluster"
    try:
        import psycopg  # noqa: F401  - SQLAlchemy 2.1's driver for postgresql:// URIs
    except ImportError:
        return "psycopg is not installed (requirements.txt names psycopg[binary])"
    return None


class PostgresServer:
    def __init__(self):
        self.root = None  # a folder of its own under /tmp: pytest's tmp_path is closed to other users
        self.port = free_port()
        self.bin = bin_dir()

    @property
    def env(self):
        return {"PGPASSWORD": PASSWORD}

    def uri(self, database, host=None):
        return f"postgresql://{USER}@{host or f'127.0.0.1:{self.port}'}/{database}"

    def _as_owner(self, args, **kw):
        cmd = [os.path.join(self.bin, args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)

    def start(self, database="mlflow"):
        self.root = Path(tempfile.mkdtemp(prefix="hvdspar-pg-"))
        self.data = self.root / "data"
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._as_owner(["initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
                        "--auth", "scram-sha-256", "-E", "UTF8", "--no-locale"])
        pwfile.unlink()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        self._as_owner(["pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                        "-w", "-t", "60", "start"])
        self.sql(f"CREATE DATABASE {database}")
        return self

    def run_sql(self, path, database="postgres"):
        """Run a SQL file with psql as the mlflow role (as the postgres image runs /docker-entrypoint-initdb.d)."""
        return self._psql(["-f", str(path)], database)

    def sql(self, statement, database="postgres"):
        """One statement through psql; its rows as text, one line each."""
        return self._psql(["-At", "-c", statement], database)

    def _psql(self, args, database):
        return subprocess.run([os.path.join(self.bin, "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-h", "127.0.0.1",
                               "-p", str(self.port), "-U", USER, "-d", database, *args],
                              check=True, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **self.env}).stdout

    def log(self):
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self):
        if self.root is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._as_owner(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
