"""jobq's PostgreSQL advisory locks, numbered in one place: (LOCK_SPACE, number) pairs, so they
never collide with another application's single-key locks on the same database."""

LOCK_SPACE = 0x6A6F6271  # "jobq" in ASCII: the first key of every jobq advisory lock
LOCKS = {
    # Maintenance operations (service/maintenance.py): one worker at a time runs each.
    "recover_stalled": 1,
    "purge_finished": 2,
    "apply_retention": 3,
    # `jobq migrate` (migrations/env.py): two processes migrating at once take turns.
    "migrate": 4,
}
"""Never reuse a number: an old process may still hold it during an upgrade."""
