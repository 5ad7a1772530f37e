"""The SQL store behind the ledger and the parked sessions.

SQLite by default (one file under AGENTGUARD_HOME, WAL mode, safe for several processes on one
machine); PostgreSQL (``postgresql+psycopg://``) when several machines share budgets. Both are
driven through SQLAlchemy Core with the same statements: every write that must not race takes a
lock first (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on PostgreSQL).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from agentguard.errors import StoreError
from agentguard.files import private_dir, private_file

__all__ = ["SCHEMA_VERSION", "Store", "metadata", "open_store"]

SCHEMA_VERSION = 4
"""2: budget holds are kept per key (``agentguard_budget_keys``), holds charged by a sweep are
kept for reconciliation, and SQLite keeps one store clock. 3: the billed size of responses.
4: model cooldowns (``agentguard_model_health``)."""

metadata = sa.MetaData()

schema_info = sa.Table(
    "agentguard_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

# Money is stored as integer nano-dollars: exact, and big enough for $9 billion.
budget_windows = sa.Table(
    "agentguard_budget_windows",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("window_start_ms", sa.BigInteger, primary_key=True),
    sa.Column("spent_nusd", sa.BigInteger, nullable=False, default=0),
    sa.Column("reserved_nusd", sa.BigInteger, nullable=False, default=0),
    sa.Column("calls", sa.BigInteger, nullable=False, default=0),
)

reservations = sa.Table(
    "agentguard_reservations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("window_start_ms", sa.BigInteger, nullable=False),
    sa.Column("amount_nusd", sa.BigInteger, nullable=False),
    sa.Column("expires_at_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("session_id", sa.String(255)),
)

spend_events = sa.Table(
    "agentguard_spend_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("amount_nusd", sa.BigInteger, nullable=False),
    sa.Index("ix_agentguard_spend_events_key_at", "key", "at_ms"),
)

budget_keys = sa.Table(
    "agentguard_budget_keys",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("window_ms", sa.BigInteger),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("reserved_nusd", sa.BigInteger, nullable=False, default=0),
    sa.Column("prev_window_ms", sa.BigInteger),
    sa.Column("prev_mode", sa.String(16)),
    sa.Column("prev_until_ms", sa.BigInteger),
)
"""One row per budget key: the window it was last used with (so a changed window is noticed),
the window it had before until that one ends, and every hold on the key (calls in flight and
lease slices), whatever window it was taken in."""

charged_holds = sa.Table(
    "agentguard_charged_holds",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("window_start_ms", sa.BigInteger, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("amount_nusd", sa.BigInteger, nullable=False),
)
"""Holds a sweep charged at their worst case (their process died or stalled): what may still
be given back, once, when the real cost becomes known."""

store_clock = sa.Table(
    "agentguard_clock",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("now_ms", sa.BigInteger, nullable=False),
)
"""SQLite's one clock: the latest time any process wrote; time never goes back below it."""

response_contexts = sa.Table(
    "agentguard_response_contexts",
    metadata,
    sa.Column("response_id", sa.String(255), primary_key=True),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False, index=True),
)
"""The billed size of each response the guard settled: what a later call naming it as its
``previous_response_id`` is billed again as input."""

model_health = sa.Table(
    "agentguard_model_health",
    metadata,
    sa.Column("model", sa.String(255), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_start_ms", sa.BigInteger, nullable=False),
    sa.Column("cooling_until_ms", sa.BigInteger, nullable=False),
    sa.Column("probe_until_ms", sa.BigInteger, nullable=False),
)
"""Failing models, shared by every process: recent failures, and the cooldown (and its
half-open probe) that makes every process skip a model that keeps failing."""

parked_sessions = sa.Table(
    "agentguard_parked_sessions",
    metadata,
    sa.Column("session_id", sa.String(255), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("resume_at_ms", sa.BigInteger, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_until_ms", sa.BigInteger),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)


_NAMED_PARAM = re.compile(r":(\w+)")
# Serialises schema creation on PostgreSQL (any fixed number, the same in every process).
_SCHEMA_LOCK_ID = 7_316_002_001
_RACE_SIGNS = ("locked", "busy", "already exists", "duplicate key", "unique constraint")


def _lost_a_race(exc: BaseException) -> bool:
    """Whether a schema error is another process creating the same schema at the same time."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(sign in text for sign in _RACE_SIGNS)


def _sqlite_file(url: sa.URL) -> Path | None:
    """The file a SQLite URL opens, whatever its form: a plain or relative path, ``~``, a
    ``file:`` URI (``sqlite:///file:/path/x.db?uri=true``), with or without a query string;
    ``None`` for an in-memory database."""
    database = url.database or ""
    if database.startswith("file:") and url.query.get("uri") in ("true", "1"):
        rest = unquote(database[len("file:") :])
        if rest.startswith("//"):
            # file://host/path: the authority is empty or localhost on any local file.
            rest = "/" + rest[2:].partition("/")[2]
        database = rest
        if url.query.get("mode") == "memory":
            return None
    if not database or database == ":memory:":
        return None
    return Path(database).expanduser()


class Cursor:
    """A driver cursor that takes ``:name`` parameters whatever the driver's style."""

    __slots__ = ("_translate", "raw")

    def __init__(self, raw: Any, translate: Callable[[str], str] | None) -> None:
        self.raw = raw
        self._translate = translate or _same

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self.raw.execute(self._translate(sql), params or {})
        return self.raw

    def rowcount(self, sql: str, params: Mapping[str, Any]) -> int:
        raw = self.raw
        raw.execute(self._translate(sql), params)
        return int(raw.rowcount)

    def one(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        self.raw.execute(self._translate(sql), params)
        row = self.raw.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        self.raw.execute(self._translate(sql), params)
        return [tuple(row) for row in self.raw.fetchall()]


def _same(sql: str) -> str:
    return sql


def _redact(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable store url>"


class Store:
    """A connection pool to one database, with the agentguard schema created on first use.

    Use :func:`open_store` to share one ``Store`` per URL in a process.

    Args:
        url: the SQLAlchemy URL.
        busy_timeout_s: how long SQLite waits for another process's write lock.
        origin: where the URL came from (``store.url``), named in every error so the user
            knows what to change.
    """

    def __init__(
        self, url: str, *, busy_timeout_s: float = 30.0, origin: str = "store.url"
    ) -> None:
        self.url = url
        self.safe_url = _redact(url)
        self.origin = origin
        self.busy_timeout_s = busy_timeout_s
        try:
            parsed = sa.make_url(url)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"{origin}: {self.safe_url} is not a valid SQLAlchemy URL: {exc}",
                url=self.safe_url,
            ) from exc
        self.dialect = parsed.get_backend_name()
        self.is_sqlite = self.dialect == "sqlite"
        self._sqlite_path: Path | None = None
        """The SQLite file, when the fast path drives it."""
        self._sqlite_file: Path | None = None
        """The SQLite file, whatever the URL's form (kept 0600 with its -wal and -shm)."""
        self.engine = self._create_engine(parsed)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._translated: dict[str, str] = {}
        self._local = threading.local()
        self._paramstyle = (
            "named"
            if self.is_sqlite
            else getattr(self.engine.dialect.dbapi, "paramstyle", "pyformat")
        )
        dbapi = self.engine.dialect.dbapi
        self._driver_error: type[BaseException] = getattr(dbapi, "Error", SQLAlchemyError)
        os.register_at_fork(after_in_child=self._after_fork)

    def _create_engine(self, url: sa.URL) -> Engine:
        if not self.is_sqlite:
            try:
                # A process stopped inside a transaction (SIGSTOP, a debugger) would hold its row
                # locks and block every other process on the budget; no transaction of ours
                # waits on anything, so the server ends one left idle this long.
                return sa.create_engine(
                    url,
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=10,
                    connect_args={"options": "-c idle_in_transaction_session_timeout=10000"},
                )
            except ImportError as exc:
                raise StoreError(
                    f"cannot open store {self.safe_url} ({self.origin}): its driver is not "
                    f"installed ({exc}); PostgreSQL needs `pip install 'agentguard[postgres]'`",
                    url=self.safe_url,
                ) from exc
            except SQLAlchemyError as exc:
                raise StoreError(
                    f"cannot open store {self.safe_url} ({self.origin}): {exc}", url=self.safe_url
                ) from exc
        if (url.database or ":memory:") == ":memory:" and not url.query:
            # An in-memory SQLite database is one per connection, and the ledger uses several
            # (its flusher thread, the store's pool): a private file that lives as long as the
            # process behaves as one database instead.
            directory = Path(tempfile.mkdtemp(prefix="agentguard-memory-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            url = url.set(database=str(directory / "store.db"))
        file = _sqlite_file(url)
        if file is not None:
            self._sqlite_file = file
            try:
                private_dir(file.parent)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the store directory {file.parent} for {self.safe_url}"
                    f" ({self.origin}): {exc.strerror}",
                    url=self.safe_url,
                ) from exc
            try:
                # Created 0600 before SQLite opens it: SQLite gives a new database the umask's
                # mode, and its -wal and -shm files the database's.
                private_file(file)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the store file {file} ({self.origin}): {exc.strerror}",
                    url=self.safe_url,
                ) from exc
        if url.query:
            # URI options (read-only mode and such) are the driver's to apply: no fast path.
            return sa.create_engine(url, connect_args={"timeout": self.busy_timeout_s})
        if file is not None:
            url = url.set(database=str(file))
            self._sqlite_path = file
        engine = sa.create_engine(
            url,
            connect_args={"timeout": self.busy_timeout_s, "check_same_thread": False},
        )
        busy_ms = int(self.busy_timeout_s * 1000)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take over transaction control from the sqlite3 module so BEGIN IMMEDIATE works.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            # Every write transaction takes the write lock up front: read-then-write races are
            # impossible and a busy database waits (busy_timeout) instead of failing on upgrade.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _after_fork(self) -> None:
        # Connections must never be shared across fork(); the child opens its own.
        self.engine.dispose(close=False)
        self._local = threading.local()

    def ensure_schema(self) -> None:
        """Create the tables if they do not exist, and check the schema version.

        Several processes may open a fresh store at once: creation runs under the database's
        write lock (an advisory lock on PostgreSQL), and a process that loses the race waits
        and retries within ``busy_timeout_s`` instead of failing.

        Raises:
            StoreError: the schema cannot be created, or is newer than this agentguard.
        """
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            deadline = time.monotonic() + self.busy_timeout_s
            pause = 0.02
            while True:
                try:
                    self._create_schema()
                    break
                except SQLAlchemyError as exc:
                    if not _lost_a_race(exc) or time.monotonic() + pause > deadline:
                        raise self.error("create the schema in", exc) from exc
                    time.sleep(pause)
                    pause = min(pause * 2, 0.5)
            if self._sqlite_file is not None:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    candidate = Path(f"{self._sqlite_file}{suffix}")
                    if candidate.exists():
                        candidate.chmod(0o600)
            self._schema_ready = True

    def _create_schema(self) -> None:
        with self.engine.begin() as connection:
            if self.is_sqlite and self._sqlite_path is None:
                # The engine of a URL with options has no begin hook: take the lock here.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif not self.is_sqlite:
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_ID})")
            metadata.create_all(connection, checkfirst=True)
            row = connection.execute(sa.select(schema_info.c.version)).first()
            if row is None:
                connection.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
            elif row.version < SCHEMA_VERSION:
                # Versions 1 to 3 lacked only tables, which create_all just made.
                connection.execute(schema_info.update().values(version=SCHEMA_VERSION))
            elif row.version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.safe_url} has schema version {row.version}, newer than "
                    f"this agentguard understands ({SCHEMA_VERSION}); upgrade agentguard",
                    url=self.safe_url,
                )

    def cursor(self, *, write: bool = True) -> AbstractContextManager[Cursor]:
        """A write transaction on a raw driver connection, for the per-call hot path.

        With ``write=False``, a read transaction: on SQLite it takes no write lock (a process
        that only looks never holds up one that writes); it still ends, committed, when the
        block ends, so no read snapshot outlives it.

        SQLAlchemy's statement machinery costs more than the whole SQLite transaction; the
        ledger's few fixed statements run on the driver directly, written once with ``:name``
        parameters and translated for drivers that use ``%(name)s``.

        Raises:
            StoreError: the database cannot be reached or written.
        """
        if not self._schema_ready:
            self.ensure_schema()
        if self._sqlite_path is not None:
            return _SQLiteTransaction(self, "BEGIN IMMEDIATE" if write else "BEGIN")
        return self._pooled_cursor()

    @contextmanager
    def _pooled_cursor(self) -> Iterator[Cursor]:
        try:
            raw = self.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise self.error("connect to", exc) from exc
        try:
            cursor = Cursor(raw.cursor(), self._translate)
            try:
                if self.is_sqlite:
                    cursor.raw.execute("BEGIN IMMEDIATE")
                yield cursor
            except BaseException:
                raw.rollback()
                raise
            else:
                raw.commit()
            finally:
                cursor.raw.close()
        except (SQLAlchemyError, self._driver_error) as exc:
            raise self.error("write to", exc) from exc
        finally:
            raw.close()

    def _sqlite_connection(self) -> tuple[sqlite3.Connection, Cursor]:
        # One driver connection per thread, kept open: checking one out of a pool for each
        # transaction costs as much as the transaction.
        local = self._local
        connection: sqlite3.Connection | None = getattr(local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                str(self._sqlite_path),
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            local.connection = connection
            local.cursor = Cursor(connection.cursor(), None)
        return connection, local.cursor

    def _translate(self, sql: str) -> str:
        cached = self._translated.get(sql)
        if cached is None:
            cached = sql if self._paramstyle == "named" else _NAMED_PARAM.sub(r"%(\1)s", sql)
            self._translated[sql] = cached
        return cached

    def error(self, action: str, exc: BaseException) -> StoreError:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        hint = ""
        lowered = detail.lower()
        if "readonly" in lowered or "read-only" in lowered:
            hint = " (the store file or its directory is read-only)"
        elif "disk" in lowered and "full" in lowered:
            hint = " (the disk is full)"
        elif "locked" in lowered:
            hint = " (another process held the lock longer than busy_timeout_s)"
        return StoreError(
            f"cannot {action} store {self.safe_url} ({self.origin}): {detail}{hint}",
            url=self.safe_url,
        )

    def dispose(self) -> None:
        self.engine.dispose()


class _SQLiteTransaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the thread's connection (a plain class: a
    generator-based context manager costs a noticeable share of a call)."""

    __slots__ = ("begin", "connection", "cursor", "store")

    def __init__(self, store: Store, begin: str = "BEGIN IMMEDIATE") -> None:
        self.store = store
        self.begin = begin

    def __enter__(self) -> Cursor:
        try:
            self.connection, self.cursor = self.store._sqlite_connection()
            self.connection.execute(self.begin)
        except sqlite3.Error as exc:
            raise self.store.error("write to", exc) from exc
        return self.cursor

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        connection = self.connection
        try:
            if exc_type is None:
                connection.execute("COMMIT")
                return
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error as error:
            if connection.in_transaction:
                with suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise self.store.error("write to", error) from error
        if isinstance(exc, sqlite3.Error):
            raise self.store.error("write to", exc) from exc


_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


def open_store(url: str, *, busy_timeout_s: float = 30.0, origin: str = "store.url") -> Store:
    """The process-wide :class:`Store` for ``url`` (created on first use; ``origin`` names
    where the URL came from in errors)."""
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = Store(url, busy_timeout_s=busy_timeout_s, origin=origin)
        return store
