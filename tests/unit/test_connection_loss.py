"""What counts as "the database cannot be reached right now" (DatabaseUnavailable: 503 in the API,
wait and retry in a worker), and the libpq URL parameters that bound every connection."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy.exc
from procrastinate import exceptions as pq_exceptions
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from service import errors
from service.backend import is_connection_loss, unavailable_on_connection_loss
from service.db import engine


def through_sqlalchemy(error: Exception) -> sqlalchemy.exc.DBAPIError:
    """`error` as it comes out of SQLAlchemy's asyncpg dialect: asyncpg's error is the cause of
    the dialect's DBAPI error, which is the `orig` of SQLAlchemy's DBAPIError."""
    dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)
    translated = dbapi.Error(str(error), error)
    translated.__cause__ = error
    wrapped = sqlalchemy.exc.DBAPIError.instance(None, None, translated, dbapi.Error)
    wrapped.__cause__ = translated
    return wrapped


NOT_NOW = [
    # The failure of issue 11: a worker registering while PostgreSQL was stopping.
    asyncpg.CannotConnectNowError("the database system is shutting down"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CrashShutdownError("terminating connection because of crash of another process"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("connection is closed"),
    # Seen in the API while PostgreSQL stopped under load.
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ConnectionRefusedError(111, "Connect call failed"),
    FileNotFoundError(2, "No such file or directory"),  # the Unix socket is gone
    TimeoutError(),  # connect timeout, command_timeout
]


@pytest.mark.parametrize("error", NOT_NOW, ids=lambda e: type(e).__name__)
def test_lost_or_refused_connections_mean_not_now(error: Exception):
    assert is_connection_loss(error)
    assert is_connection_loss(through_sqlalchemy(error))
    wrapped = pq_exceptions.ConnectorException(str(error))
    wrapped.__cause__ = error
    assert is_connection_loss(wrapped)


NOT_THIS = [
    asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.InvalidPasswordError("password authentication failed"),
    asyncpg.UndefinedFunctionError("function procrastinate_register_worker_v1() does not exist"),
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    ValueError("a bug"),
]


@pytest.mark.parametrize("error", NOT_THIS, ids=lambda e: type(e).__name__)
def test_refusals_and_bugs_are_not_connection_loss(error: Exception):
    assert not is_connection_loss(error)
    assert not is_connection_loss(through_sqlalchemy(error))


def test_an_invalidated_connection_is_connection_loss():
    wrapped = sqlalchemy.exc.DBAPIError.instance(
        None, None, RuntimeError("x"), Exception, connection_invalidated=True)
    assert is_connection_loss(wrapped)


def test_the_backend_raises_database_unavailable_and_lets_the_rest_through():
    shutting_down = through_sqlalchemy(asyncpg.CannotConnectNowError("shutting down"))
    with pytest.raises(errors.DatabaseUnavailable) as caught:
        with unavailable_on_connection_loss():
            raise shutting_down
    assert caught.value.__cause__ is shutting_down
    with pytest.raises(asyncpg.UniqueViolationError):
        with unavailable_on_connection_loss():
            raise asyncpg.UniqueViolationError("duplicate")


def test_libpq_client_parameters_are_taken_out_of_the_url():
    url, options = engine.split_url(
        "postgresql://u@h/d?keepalives_idle=30&keepalives_count=5&connect_timeout=2"
        "&tcp_user_timeout=45000&application_name=x")
    assert url == "postgresql://u@h/d?application_name=x"
    assert (options.keepalives_idle, options.keepalives_count, options.connect_timeout,
            options.tcp_user_timeout) == (30, 5, 2.0, 45000)
    assert options.keepalives_interval == engine.ConnectOptions().keepalives_interval


def test_keepalives_can_be_turned_off_and_bad_values_are_named():
    _, options = engine.split_url("postgresql://u@h/d?keepalives=0")
    assert not options.keepalives and options.server_settings_sql() == ""
    with pytest.raises(ValueError, match="keepalives_idle"):
        engine.split_url("postgresql://u@h/d?keepalives_idle=soon")


def test_defaults_bound_every_call():
    options = engine.ConnectOptions()
    assert options.connect_timeout and options.command_timeout
    # The user timeout must not cut the keepalive probing short.
    assert options.tcp_user_timeout >= 1000 * (
        options.keepalives_idle + options.keepalives_interval * options.keepalives_count)
