"""The embedded PostgreSQL (binaries from the ``pgserver`` package), admitting only its owner.

pgserver's own ``get_server`` is not used (it sets up ``trust`` authentication and, run as root,
opens parent directories and its socket directory to everyone). Here: scram with a random password
in a 0600 password file, no TCP, a private 0700 socket directory, the server run as the project's
own user (in a user namespace under root), no existing directory's permissions changed, and start-up
serialised by a ``flock``. The server is left running for the next process
(:func:`stop_embedded_server` stops it). Why and how: docs/security.md, "The embedded PostgreSQL".
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from .urls import redacted_error

logger = logging.getLogger("pipelines.warehouse.db")

PGDATA_ENV = "TAPTOUCH_PGDATA"
EMBEDDED_DATABASE = "taptouch"
"""Name of the database created inside the embedded server (not the default ``postgres`` db)."""
SUPERUSER = "postgres"
SOCKET_PATH_LIMIT = 100  # bytes of <dir>/.s.PGSQL.5432 (sun_path holds 108 on Linux, 104 on macOS)
HBA_MARKER = "# taptouch-sync: only the owner, by password, over a private unix socket"
_HBA = f"""{HBA_MARKER}
# (the password is in the libpq password file next to the data directory, mode 0600)
local   all   all   scram-sha-256
"""
_SERVER_OPTIONS = (
    "-c",
    "listen_addresses=",
    "-c",
    "unix_socket_permissions=0700",
    "-c",
    "password_encryption=scram-sha-256",
)

_embedded_urls: dict[Path, str] = {}
_embedded_guard = threading.Lock()


class EmbeddedServerError(RuntimeError):
    """The embedded PostgreSQL cannot be started safely here (the message says what to do)."""


class EmbeddedSettingError(EmbeddedServerError):
    """``TAPTOUCH_PGDATA`` (or the data directory given) cannot be a data directory: a setting to fix."""


def project_root() -> Path:
    """The directory holding ``pyproject.toml`` above this file; the cwd when there is none
    (e.g. when the package is installed into site-packages)."""
    return _source_root() or Path.cwd()


@lru_cache(maxsize=1)
def _source_root() -> Path | None:
    """The directory holding ``pyproject.toml`` above this file, looked up once per process (the
    definitions ask for it dozens of times while they load: every SQL file's path)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def private_dir(path: Path) -> Path:
    """``mkdir -p`` where every directory created gets mode 0700; existing ones are left alone."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with suppress(FileExistsError):
            directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    return path


def state_dir() -> Path:
    """``<project root>/.taptouch``, created 0700 (it holds the embedded data, the Dagster home)."""
    root = project_root() / ".taptouch"
    private_dir(root)
    if root.stat().st_uid == os.geteuid() and stat.S_IMODE(root.stat().st_mode) != 0o700:
        os.chmod(root, 0o700)  # the project's own directory: tighten one made by an older version
    return root


def embedded_data_dir(data_dir: str | Path | None = None) -> Path:
    """Data directory of the embedded server: ``data_dir``, else ``$TAPTOUCH_PGDATA``, else
    ``<project root>/.taptouch/pgdata``."""
    chosen = data_dir or os.environ.get(PGDATA_ENV, "").strip()  # whitespace around a path is a typo
    if not chosen:
        return (state_dir() / "pgdata").resolve()
    return Path(chosen).expanduser().resolve()


def _setting(data_dir: str | Path | None) -> str:
    return "the data directory" if data_dir else PGDATA_ENV


def _check_empty(pgdata: Path, setting: str) -> None:
    """Before ``initdb`` (under the start-up lock): ``pgdata`` is missing or empty."""
    if pgdata.is_dir() and any(pgdata.iterdir()):
        raise EmbeddedSettingError(
            f"{setting} is {pgdata}, a directory that holds other files and no PostgreSQL data: set {PGDATA_ENV} "
            f"to a new or empty directory (e.g. {pgdata / 'pgdata'}), or set TAPTOUCH_DATABASE_URL to a PostgreSQL server."
        )


def _check_data_dir(pgdata: Path, setting: str) -> None:
    """Fail, naming the setting, when ``pgdata`` cannot be a data directory."""
    for path in (pgdata, *pgdata.parents):
        if path.exists():
            if not path.is_dir():
                raise EmbeddedSettingError(
                    f"{setting} is {pgdata}, but {path} is a file, not a directory: set {PGDATA_ENV} to a directory "
                    f"(it is created if missing), or set TAPTOUCH_DATABASE_URL to a PostgreSQL server."
                )
            break


def passfile_path(pgdata: Path) -> Path:
    return pgdata.with_name(pgdata.name + ".pgpass")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created 0600 if missing)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if os.fstat(fd).st_uid == os.geteuid():
        os.fchmod(fd, 0o600)  # one left by an older version may be 0644
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (atomically replaced)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_password(pgdata: Path) -> str | None:
    path = passfile_path(pgdata)
    try:
        line = path.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return None
    return line.rsplit(":", 1)[-1] or None


# -------------------------------------------------------------------------------------- binaries
def _bin(name: str) -> str:
    with warnings.catch_warnings():  # pgserver warns when XDG_RUNTIME_DIR is unset: harmless
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    return str(POSTGRES_BIN_PATH / name)


def _namespace_ids() -> tuple[int, int]:
    """A non-zero (uid, gid) with a passwd entry, for PostgreSQL's view of itself in the namespace."""
    import pwd

    for entry in sorted(pwd.getpwall(), key=lambda e: e.pw_uid):
        if 0 < entry.pw_uid < 65534:
            return entry.pw_uid, entry.pw_gid
    return 1, 1


@lru_cache(maxsize=1)
def _run_mode() -> str:
    """``direct`` (not root), ``userns`` (root, in a user namespace) or ``system-user`` (root,
    as ``pgserver``)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "direct"
    unshare = shutil.which("unshare")
    if unshare:
        uid, gid = _namespace_ids()
        probe = subprocess.run(
            [unshare, "--user", f"--map-user={uid}", f"--map-group={gid}", "true"], capture_output=True
        )
        if probe.returncode == 0:
            return "userns"
    return "system-user"


def _command(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """``argv`` (a PostgreSQL binary) as this project runs it: itself, in a user namespace or as
    ``pgserver`` (see the module doc)."""
    mode = _run_mode()
    if mode == "userns":
        uid, gid = _namespace_ids()
        return [
            shutil.which("unshare") or "unshare",
            "--user",
            f"--map-user={uid}",
            f"--map-group={gid}",
            "--",
            *argv,
        ], {}
    if mode == "system-user":
        return list(argv), {"user": "pgserver", "group": "pgserver"}
    return list(argv), {}


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 120) -> str:
    cmd, extra = _command(argv)
    done = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout, env={**os.environ, "LC_ALL": "C"}, **extra
    )
    if done.returncode != 0:
        raise EmbeddedServerError(
            f"{Path(argv[0]).name} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


def _server_owner() -> tuple[int, int]:
    """Who owns the data directory: this user, or ``pgserver`` when root runs without namespaces."""
    if _run_mode() == "system-user":
        import pwd

        try:
            entry = pwd.getpwnam("pgserver")
        except KeyError:
            raise EmbeddedServerError(
                "Running as root without user namespaces, the embedded PostgreSQL needs the system user "
                "`pgserver` (useradd --system pgserver), or run taptouch-sync as an ordinary user, or set "
                "TAPTOUCH_DATABASE_URL to a PostgreSQL server."
            ) from None
        return entry.pw_uid, entry.pw_gid
    return os.geteuid(), os.getegid()


def _check_reachable_by_server(path: Path) -> None:
    """As ``pgserver`` (no namespaces), every parent must already be traversable by it: fail
    instead of opening them up."""
    if _run_mode() != "system-user":
        return
    uid, gid = _server_owner()
    for parent in path.parents:
        st = parent.stat()
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            raise EmbeddedServerError(
                f"The embedded PostgreSQL runs as the system user `pgserver` here (root, no user "
                f"namespaces) and cannot reach {path}: {parent} is not traversable by it. taptouch-sync "
                f"does not change the permissions of your directories: set TAPTOUCH_PGDATA to a directory "
                f"under a path `pgserver` may traverse, run as an ordinary user, or set TAPTOUCH_DATABASE_URL."
            )


# -------------------------------------------------------------------------------------- lifecycle
def _postmaster(pgdata: Path) -> dict[str, Any] | None:
    """The running postmaster of ``pgdata`` (pid, socket dir, port), or None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 8:
        return None
    try:
        pid = int(lines[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass
    info = {"pid": pid, "socket_dir": lines[4].strip(), "port": int(lines[3] or 5432), "status": lines[7].strip()}
    if _runs_in(pid, pgdata) is False:
        if not _answers(info):  # a killed server's pid, now another process's
            return None
        # a live server of another pid namespace (a container sharing the data directory): its
        # pid here is another process's, never to be signalled
        info["foreign"] = True
    return info


def _answers(info: dict[str, Any]) -> bool:
    """Whether a server accepts connections on the socket a ``postmaster.pid`` names (a killed
    server's socket file refuses them)."""
    path = os.path.join(info["socket_dir"], f".s.PGSQL.{info['port']}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _runs_in(pid: int, pgdata: Path) -> bool | None:
    """Whether process ``pid`` works in ``pgdata`` (a postmaster's working directory is its data
    directory): None when this system cannot tell (no /proc, another user's process)."""
    if not Path("/proc/self/cwd").exists():
        return None
    try:
        cwd = os.stat(f"/proc/{pid}/cwd")
        data = os.stat(pgdata)
    except FileNotFoundError:
        return False  # gone meanwhile
    except OSError:
        return None
    return (cwd.st_dev, cwd.st_ino) == (data.st_dev, data.st_ino)


def _remove_stale_pid_file(pgdata: Path) -> None:
    """A ``postmaster.pid`` left by a killed server whose pid another process now has: PostgreSQL
    would refuse to start ("lock file already exists"), and nothing of ours may signal that pid.
    Removed only when /proc shows that process is not in ``pgdata`` and no server answers on the
    socket the file names (a live server of another pid namespace does)."""
    path = pgdata / "postmaster.pid"
    try:
        lines = path.read_text().splitlines()
        pid = int(lines[0])
        info = {"socket_dir": lines[4].strip(), "port": int(lines[3] or 5432)}
    except (OSError, ValueError, IndexError):
        return
    if _runs_in(pid, pgdata) is False and not _answers(info):
        logger.info("removing the stale %s (pid %s is not the embedded PostgreSQL)", path, pid)
        with suppress(FileNotFoundError):
            path.unlink()


def _hardened(pgdata: Path) -> bool:
    try:
        hba = (pgdata / "pg_hba.conf").read_text()
    except OSError:
        return False
    return hba.startswith(HBA_MARKER) and _read_password(pgdata) is not None


def _socket_dir(pgdata: Path) -> Path:
    if len(os.fsencode(str(pgdata / ".s.PGSQL.5432"))) <= SOCKET_PATH_LIMIT:
        return pgdata
    base = Path(tempfile.gettempdir())
    if len(os.fsencode(str(base))) > 40:
        base = Path("/tmp")
    directory = Path(tempfile.mkdtemp(prefix="taptouch-pg-", dir=base))  # 0700, ours, unguessable
    uid, gid = _server_owner()
    if uid != os.geteuid():
        os.chown(directory, uid, gid)
    return directory


def _initdb(pgdata: Path, password: str) -> None:
    _check_reachable_by_server(pgdata)
    uid, gid = _server_owner()
    private_dir(pgdata)
    if pgdata.stat().st_uid != uid:
        os.chown(pgdata, uid, gid)
    with tempfile.TemporaryDirectory(prefix="taptouch-initdb-") as scratch:
        pwfile = Path(scratch) / "pw"
        _write_private(pwfile, password + "\n")
        if uid != os.geteuid():
            os.chown(scratch, uid, gid)
            os.chown(pwfile, uid, gid)
        _run(
            [
                _bin("initdb"),
                "-D",
                str(pgdata),
                "-U",
                SUPERUSER,
                "--auth-local=scram-sha-256",
                "--auth-host=reject",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-instructions",
            ]
        )
    hba = pgdata / "pg_hba.conf"
    _write_private(hba, _HBA)
    if uid != os.geteuid():
        os.chown(hba, uid, gid)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.chown(root, uid, gid)


def _harden_existing(pgdata: Path, password: str) -> None:
    """A data directory made by an older version (pgserver's trust authentication): set the
    superuser password in single-user mode (no socket, no connection) and require it."""
    uid, gid = _server_owner()
    if pgdata.stat().st_uid != uid:  # e.g. made by pgserver's `pgserver` user; now run as this one
        _chown_tree(pgdata, uid, gid)
    os.chmod(pgdata, 0o700)
    literal = password.replace("'", "''")
    _run(
        [_bin("postgres"), "--single", "-D", str(pgdata), SUPERUSER],
        input=f"alter role {SUPERUSER} with password '{literal}';\n",
    )
    hba = pgdata / "pg_hba.conf"
    _write_private(hba, _HBA)
    if uid != os.geteuid():
        os.chown(hba, uid, gid)


def _start(pgdata: Path) -> dict[str, Any]:
    socket_dir = _socket_dir(pgdata)
    options = " ".join(shlex.quote(o) for o in ("-k", str(socket_dir), *_SERVER_OPTIONS))
    log_file = pgdata / "log"
    try:
        _run([_bin("pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-l", str(log_file), "-o", options, "start"])
    except EmbeddedServerError as exc:  # pg_ctl says only "Examine the log output": say why, and where
        try:
            tail = "\n".join(log_file.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            tail = ""
        raise EmbeddedServerError(
            f"The embedded PostgreSQL in {pgdata} did not start: {exc}\nIts log ({log_file}) ends with:\n{tail}"
        ) from None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = _postmaster(pgdata)
        if info is not None and info["status"] == "ready":
            return info
        time.sleep(0.1)
    raise EmbeddedServerError(f"The embedded PostgreSQL in {pgdata} did not become ready; see {log_file}.")


def _stop(pgdata: Path, info: dict[str, Any], timeout: float = 60) -> None:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT) if it takes longer than ``timeout``."""
    if info.get("foreign"):
        raise EmbeddedServerError(
            f"The embedded PostgreSQL in {pgdata} runs in another pid namespace (a container sharing the "
            f"data directory): stop it there (its pid {info['pid']} here is another process's)."
        )
    pid = info["pid"]
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _postmaster(pgdata) is not None:
            time.sleep(0.05)
        if _postmaster(pgdata) is None:
            break
    socket_dir = Path(info["socket_dir"])
    if socket_dir != pgdata and socket_dir.name.startswith("taptouch-pg-"):
        shutil.rmtree(socket_dir, ignore_errors=True)


def server_url(info: dict[str, Any], pgdata: Path, database: str) -> str:
    """The URL of ``database``: the socket directory as ``host``, the password file as ``passfile``."""
    query = "&".join(
        f"{k}={quote(str(v), safe='/')}"
        for k, v in (("host", info["socket_dir"]), ("port", info["port"]), ("passfile", passfile_path(pgdata)))
    )
    # an empty password= : libpq then reads the passfile even when PGPASSWORD is set (it prefers
    # PGPASSWORD, which a user of another PostgreSQL may well export, to the passfile)
    query += "&password="
    return f"postgresql://{SUPERUSER}@/{database}?{query}"


_SETTING_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EROFS, errno.ELOOP}
)


def embedded_database_url(data_dir: str | Path | None = None) -> str:
    """URL of the ``taptouch`` database in the embedded PostgreSQL for ``data_dir`` (see
    :func:`embedded_data_dir`), started on first use and left running so later processes reuse it.

    Safe when several processes call it at once (a file lock on ``<data_dir>.lock``). The URL
    holds no password: it names the socket directory and the owner-only password file."""
    try:
        return _embedded_database_url(data_dir)
    except OSError as exc:  # the data directory cannot be made or used here
        setting = _setting(data_dir)
        # only what the directory itself causes is a setting to fix (a refused fork, a full disk: a failure)
        kind = EmbeddedSettingError if exc.errno in _SETTING_ERRNOS else EmbeddedServerError
        error = kind(
            f"The embedded PostgreSQL cannot use its data directory ({setting}): {exc.strerror or exc} "
            f"({exc.filename or embedded_data_dir(data_dir)}). Set {PGDATA_ENV} to a directory this user may "
            f"create and write (at most a few hundred characters long), or set TAPTOUCH_DATABASE_URL to a "
            f"PostgreSQL server."
        )
    raise error


def _embedded_database_url(data_dir: str | Path | None = None) -> str:
    pgdata = embedded_data_dir(data_dir)
    with _embedded_guard:
        cached = _embedded_urls.get(pgdata)
        if cached is not None:
            return cached
        _check_data_dir(pgdata, _setting(data_dir))
        private_dir(pgdata.parent)
        with _file_lock(pgdata.with_name(pgdata.name + ".lock")):
            info = _postmaster(pgdata)
            if info is None or not _hardened(pgdata):
                if info is not None:  # started by an older version, with trust authentication
                    logger.info("restarting the embedded PostgreSQL in %s with password authentication", pgdata)
                    _stop(pgdata, info)
                if not (pgdata / "PG_VERSION").exists():
                    _check_empty(pgdata, _setting(data_dir))
                password = _read_password(pgdata) or secrets.token_urlsafe(32)
                _write_private(passfile_path(pgdata), f"*:*:*:{SUPERUSER}:{password}\n")
                if not (pgdata / "PG_VERSION").exists():
                    logger.info("initialising the embedded PostgreSQL in %s", pgdata)
                    _initdb(pgdata, password)
                if not _hardened(pgdata):
                    _harden_existing(pgdata, password)
                _remove_stale_pid_file(pgdata)
                logger.info("starting embedded PostgreSQL in %s", pgdata)
                info = _start(pgdata)
            _create_database_if_missing(server_url(info, pgdata, SUPERUSER), EMBEDDED_DATABASE)
            url = server_url(info, pgdata, EMBEDDED_DATABASE)
        _embedded_urls[pgdata] = url
        return url


def _embedded_running(pgdata: Path) -> bool:
    return _postmaster(pgdata) is not None


def stop_embedded_server(data_dir: str | Path | None = None) -> bool:
    """Stop the embedded server for ``data_dir`` (see :func:`embedded_data_dir`) if it runs.
    Returns whether a server was stopped. Its data stays on disk."""
    pgdata = embedded_data_dir(data_dir)
    with _embedded_guard:
        _embedded_urls.pop(pgdata, None)
        if not pgdata.exists():
            return False
        with _file_lock(pgdata.with_name(pgdata.name + ".lock")):
            info = _postmaster(pgdata)
            if info is None:
                return False
            _stop(pgdata, info)
            logger.info("stopped embedded PostgreSQL in %s", pgdata)
            return True


def _create_database_if_missing(admin_url: str, database: str) -> None:
    try:
        conn = psycopg.connect(admin_url, autocommit=True)
    except psycopg.Error as exc:
        error = redacted_error(exc, admin_url)
    else:
        with conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
                logger.info("created database %s in the embedded PostgreSQL", database)
        return
    raise error
