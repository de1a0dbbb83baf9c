"""How the connector rewrites Procrastinate's pyformat queries for asyncpg (no database)."""

from __future__ import annotations

import datetime

from procrastinate import sql, types

from service.queue.connector import _Query


def test_repeated_name_uses_one_placeholder():
    query = _Query("SELECT %(a)s, %(b)s WHERE x = %(a)s OR y = %(b)s")

    assert query.sql == "SELECT $1, $2 WHERE x = $1 OR y = $2"
    assert query.names == ["a", "b"]


def test_arguments_follow_placeholder_order_not_keyword_order():
    query = _Query("SELECT %(second)s, %(first)s, %(second)s")

    assert query.args({"first": 1, "second": 2, "unused": 3}) == [2, 1]


def test_doubled_percent_becomes_one():
    query = _Query("SELECT 10 %% 3, %(pattern)s LIKE 'a%%'")

    assert query.sql == "SELECT 10 % 3, $1 LIKE 'a%'"


def test_query_without_parameters_is_unchanged():
    query = _Query("SELECT * FROM procrastinate_register_worker_v1()")

    assert query.sql == "SELECT * FROM procrastinate_register_worker_v1()"
    assert query.names == []
    assert query.args({}) == []


def test_every_procrastinate_query_loses_its_pyformat_placeholders():
    for name, text in sql.queries.items():
        if name == "listen_queue":  # `{channel_name}`, formatted by psycopg connectors only
            continue
        rewritten = _Query(text)
        assert "%(" not in rewritten.sql, name
        assert len(set(rewritten.names)) == len(rewritten.names), name


def test_list_jobs_repeats_each_filter_but_binds_it_once():
    query = _Query(sql.queries["list_jobs"])

    assert query.names == [
        "id", "queue_name", "task_name", "status", "lock", "queueing_lock", "worker_id",
    ]
    assert query.sql.count("$1") == 2


def test_json_objects_are_sent_as_json_text_even_inside_composites():
    query = _Query(sql.queries["defer_jobs"])
    job = types.JobToDefer(
        queue_name="q", task_name="x", priority=0, lock=None, queueing_lock=None,
        args={"a": 1}, scheduled_at=None,
    )

    [jobs] = query.args({"jobs": [job]})

    assert jobs == [("q", "x", 0, None, None, '{"a":1}', None)]


def test_numbers_bound_to_text_parameters_become_strings():
    query = _Query("SELECT now() - (%(n)s || ' SECOND')::interval, %(m)s, %(flag)s")
    query.text_params = frozenset({0, 2})  # what the first prepare learns

    assert query.args({"n": 1.5, "m": 2, "flag": True}) == ["1.5", 2, True]


def test_other_values_pass_through():
    moment = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)
    query = _Query("SELECT %(at)s, %(names)s")

    assert query.args({"at": moment, "names": ["a", "b"]}) == [moment, ["a", "b"]]


def test_escaped_percent_before_a_name_stays_literal():
    query = _Query("SELECT '%%(literal)s', %(x)s")
    assert query.sql == "SELECT '%(literal)s', $1"
    assert query.names == ["x"]
