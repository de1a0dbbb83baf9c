"""DATABASE_URL as users write it (libpq style) becomes a URL SQLAlchemy's asyncpg accepts."""

from sqlalchemy.engine import make_url

from service.db.engine import sqlalchemy_url


def test_driver_is_asyncpg_and_the_rest_is_kept():
    url = make_url(sqlalchemy_url("postgresql://jobq:secret@db.example:6543/jobs"))
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "jobq", "secret", "db.example", 6543, "jobs")


def test_libpq_sslmode_becomes_asyncpg_ssl():
    # asyncpg.connect() has no `sslmode` argument: passed through, every connection failed.
    url = make_url(sqlalchemy_url("postgresql://u@h/d?sslmode=disable&application_name=x"))
    assert dict(url.query) == {"ssl": "disable", "application_name": "x"}
