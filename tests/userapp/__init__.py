"""A user's package, outside service/ and workers/, declaring its own job types (the tests run
it with `jobq worker --app tests.userapp.jobs`)."""
