"""DATABASE_URL as users write it (libpq style) becomes a URL SQLAlchemy's asyncpg accepts."""

from sqlalchemy.engine import make_url

from service.db.engine import sqlalchemy_url


def test_driver_is_asyncpg_and_the_rest_is_kept():
    url = make_url(sqlalchemy_url("postgresql://jobq:secret@db.example:6543/jobs"))
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "jobq", "secret", "db.example", 6543, "jobs")


def test_the_dialect_gets_no_connection_parameters():
    # The engine connects with the libpq-style URL itself (asyncpg reads sslmode, sslrootcert,
    # sslcert, sslkey...); SQLAlchemy passed each parameter to asyncpg.connect() as a keyword,
    # and every one but sslmode failed every connection (tests/e2e/test_tls.py).
    url = make_url(sqlalchemy_url(
        "postgresql://u@h/d?sslmode=verify-full&sslrootcert=/ca.crt&application_name=x"))
    assert dict(url.query) == {}
    assert (url.host, url.database) == ("h", "d")
