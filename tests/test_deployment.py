"""The container deployment: Dockerfile, docker-compose.yml and .dockerignore.

No Docker engine is needed. The files are parsed and checked against each other and
against the service (its console script, listen variable and shutdown grace), and the
healthcheck probe they carry is run against a real gRPC health service.
"""

from __future__ import annotations

import ast
import asyncio
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import socket
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from daily_aggregator.server.config import Settings

ROOT = Path(__file__).resolve().parent.parent
AGGREGATOR = "aggregator"
POSTGRES = "postgres"
LISTEN_VARIABLE = "DAILY_AGGREGATOR_LISTEN"
CONTAINER_LISTEN = "0.0.0.0:50051"
GRPC_PORT = 50051


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The instructions of each build stage, in order."""
    stages: list[list[Instruction]] = []
    pending = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), arguments.strip()))
    return stages


def argv(form: str) -> list[str]:
    """The argv a RUN/CMD/ENTRYPOINT-style argument string runs: exec form or shell form."""
    if form.startswith("["):
        parsed: list[str] = json.loads(form)
        return parsed
    return ["/bin/sh", "-c", form]


def last(stage: list[Instruction], keyword: str) -> Instruction | None:
    """The instruction that takes effect when `keyword` is given more than once."""
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    return found[-1] if found else None


def image_environment(stage: list[Instruction]) -> dict[str, str]:
    """Variables the stage's ENV instructions set (KEY=VALUE form)."""
    environment: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for assignment in shlex.split(instruction.arguments):
                key, _, value = assignment.partition("=")
                environment[key] = value
    return environment


def image_healthcheck(stage: list[Instruction]) -> list[str]:
    """The argv of the stage's HEALTHCHECK, its --options dropped."""
    instruction = last(stage, "HEALTHCHECK")
    assert instruction is not None, "the image has no HEALTHCHECK"
    match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.*)", instruction.arguments, re.DOTALL)
    assert match, f"HEALTHCHECK without CMD: {instruction.arguments!r}"
    return argv(match.group(1))


def copied_sources(stages: list[list[Instruction]]) -> set[str]:
    """Build-context paths that COPY/ADD instructions take (not those from other stages)."""
    sources: set[str] = set()
    for stage in stages:
        for instruction in stage:
            if instruction.keyword not in {"COPY", "ADD"}:
                continue
            words = shlex.split(instruction.arguments)
            if any(word.startswith("--from") for word in words):
                continue
            paths = [word for word in words if not word.startswith("--")]
            sources.update(os.path.normpath(path) for path in paths[:-1])
    return sources


def compose_argv(value: str | list[str]) -> list[str]:
    """A compose command/entrypoint, either a string or a list."""
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, given either as a mapping or as KEY=VALUE items."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {key: str(value) for key, value in environment.items()}


def compose_healthcheck(service: dict[str, Any]) -> list[str]:
    """The argv a service's healthcheck test runs."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    assert kind in {"CMD", "CMD-SHELL"}, f"healthcheck test {test!r} runs nothing"
    return rest if kind == "CMD" else shlex.split(rest[0])


def published_container_ports(service: dict[str, Any]) -> set[int]:
    """Container ports of a service's `ports`, short (HOST:CONTAINER/proto) or long syntax."""
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    return ports


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
_DURATION_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def duration_seconds(duration: str) -> float:
    """Seconds in a compose duration such as `40s` or `1m30s`."""
    parts = _DURATION_PART.findall(duration)
    assert parts, f"not a compose duration: {duration!r}"
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * _DURATION_UNIT[unit] for number, unit in parts)


def python_snippet(command: list[str]) -> str:
    """The code of a `python -c CODE` command."""
    assert command[:2] in (["python", "-c"], ["python3", "-c"]), command
    return command[2]


def _ignore_pattern(pattern: str) -> re.Pattern[str]:
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i : end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` keep `path` out of the build context.

    Docker's rules: a pattern that matches a directory excludes what is inside it, `**`
    spans directories, and the last matching pattern wins, `!` re-including.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        included = pattern.startswith("!")
        regex = _ignore_pattern(os.path.normpath(pattern.removeprefix("!").strip("/")))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not included
    return ignored


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[list[Instruction]]) -> list[Instruction]:
    return stages[-1]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_aggregator_is_built_from_this_repositorys_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    build = services[AGGREGATOR]["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (ROOT / build.get("context", ".")).resolve()
    assert context == ROOT
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.resolve() == ROOT / "Dockerfile"
    assert dockerfile.is_file()


def test_runtime_stage_runs_the_interpreter_the_environment_was_built_with(
    stages: list[list[Instruction]],
) -> None:
    images = {stage[0].arguments.split()[0] for stage in stages}
    assert len(stages) >= 2, "the image is not multi-stage"
    assert images == {"python:3.11-slim"}


def test_service_listens_on_the_published_and_exposed_port(
    services: dict[str, dict[str, Any]], runtime: list[Instruction]
) -> None:
    aggregator = services[AGGREGATOR]
    environment = image_environment(runtime) | compose_environment(aggregator)
    assert environment.get(LISTEN_VARIABLE) == CONTAINER_LISTEN
    assert "--listen" not in " ".join(compose_argv(aggregator.get("command", []))), (
        f"set {LISTEN_VARIABLE} instead: the healthcheck probe reads it"
    )
    exposed = last(runtime, "EXPOSE")
    assert exposed is not None
    assert str(GRPC_PORT) in [port.split("/")[0] for port in exposed.arguments.split()]
    assert GRPC_PORT in published_container_ports(aggregator)


def test_container_runs_the_serve_command_of_the_console_script(
    services: dict[str, dict[str, Any]], runtime: list[Instruction], pyproject: dict[str, Any]
) -> None:
    image_entrypoint = last(runtime, "ENTRYPOINT")
    image_command = last(runtime, "CMD")
    entrypoint = argv(image_entrypoint.arguments) if image_entrypoint else []
    command = argv(image_command.arguments) if image_command else []
    assert entrypoint + command == ["daily-aggregator", "serve"], "`docker run IMAGE`"

    aggregator = services[AGGREGATOR]
    if "entrypoint" in aggregator:
        # Overriding the entrypoint drops the image's CMD, as in Docker.
        entrypoint, command = compose_argv(aggregator["entrypoint"]), []
    if "command" in aggregator:
        command = compose_argv(aggregator["command"])
    container = entrypoint + command
    assert container[:2] == ["daily-aggregator", "serve"], "`docker compose up`"

    # The script's target is defined; read, not imported, so that this stays a check of
    # the wiring and not of everything the server imports.
    scripts = pyproject["project"]["scripts"]
    assert container[0] in scripts, "no such console script in pyproject.toml"
    target = scripts[container[0]]
    module, _, function = target.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed"
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_database_url_names_the_postgres_service_and_its_credentials(
    services: dict[str, dict[str, Any]],
) -> None:
    url = urlsplit(compose_environment(services[AGGREGATOR])["DATABASE_URL"])
    postgres = compose_environment(services[POSTGRES])
    assert url.scheme in {"postgresql", "postgres"}
    assert url.hostname == POSTGRES
    assert url.port == 5432
    assert unquote(url.username or "") == postgres["POSTGRES_USER"]
    assert unquote(url.password or "") == postgres["POSTGRES_PASSWORD"]
    assert unquote(url.path.removeprefix("/")) == postgres["POSTGRES_DB"]


def test_aggregator_starts_once_postgres_is_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    depends_on = services[AGGREGATOR]["depends_on"]
    assert isinstance(depends_on, dict), "the list form of depends_on does not wait for health"
    assert depends_on[POSTGRES]["condition"] == "service_healthy"


def test_postgres_healthcheck_asks_pg_isready_about_the_served_database(
    services: dict[str, dict[str, Any]],
) -> None:
    command = compose_healthcheck(services[POSTGRES])
    environment = compose_environment(services[POSTGRES])
    assert command[0] == "pg_isready"
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options["-U"] == environment["POSTGRES_USER"]
    assert options["-d"] == environment["POSTGRES_DB"]
    # Over TCP: the image's initialisation server listens on the Unix socket only.
    assert "-h" in options


def test_aggregator_healthcheck_is_the_images_grpc_health_probe(
    services: dict[str, dict[str, Any]], runtime: list[Instruction]
) -> None:
    probe = compose_healthcheck(services[AGGREGATOR])
    assert probe == image_healthcheck(runtime)
    assert "grpc_health.v1" in python_snippet(probe)


def test_stop_grace_period_outlasts_the_shutdown_grace(
    services: dict[str, dict[str, Any]],
) -> None:
    grace = duration_seconds(services[AGGREGATOR]["stop_grace_period"])
    assert grace > Settings().grace_seconds


def test_container_does_not_run_as_root(runtime: list[Instruction]) -> None:
    user = last(runtime, "USER")
    assert user is not None
    assert user.arguments.split(":")[0] not in {"root", "0"}


def test_build_context_holds_every_file_the_package_is_built_from(
    stages: list[list[Instruction]], pyproject: dict[str, Any]
) -> None:
    setuptools = pyproject["tool"]["setuptools"]
    patterns = ["*.py", *(p for ps in setuptools["package-data"].values() for p in ps)]
    roots = {Path(folder).parts[0] for folder in setuptools["package-dir"].values()}
    needed = ["pyproject.toml", "uv.lock", pyproject["project"]["readme"]]
    needed += [
        path.relative_to(ROOT).as_posix()
        for root in sorted(roots)
        for path in (ROOT / root).rglob("*")
        if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns)
    ]
    assert len(needed) > 3 + len(roots)

    sources = copied_sources(stages)
    ignore_file = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in ignore_file if line.strip() and line[0] != "#"]
    not_copied = [p for p in needed if not any(p == s or p.startswith(s + "/") for s in sources)]
    assert not_copied == []
    assert [path for path in needed if is_ignored(path, ignored)] == []


def test_dockerignore_matching_follows_docker_rules() -> None:
    patterns = ["**/__pycache__", "*.egg-info", "tests", "docs/*.md", "!docs/keep.md"]
    assert is_ignored("server/__pycache__/config.cpython-311.pyc", patterns)
    assert is_ignored("__pycache__/x.pyc", patterns)
    assert is_ignored("daily_aggregator.egg-info/PKG-INFO", patterns)
    assert is_ignored("tests/test_deployment.py", patterns)
    assert is_ignored("docs/a.md", patterns)
    assert not is_ignored("docs/keep.md", patterns)
    assert not is_ignored("server/config.py", patterns)
    assert not is_ignored("docs/sub/a.md", patterns)


@pytest.fixture(params=["docker-compose.yml", "Dockerfile"])
def probe(
    request: pytest.FixtureRequest,
    services: dict[str, dict[str, Any]],
    runtime: list[Instruction],
) -> str:
    """The aggregator's healthcheck code, as each file carries it."""
    if request.param == "docker-compose.yml":
        return python_snippet(compose_healthcheck(services[AGGREGATOR]))
    return python_snippet(image_healthcheck(runtime))


@pytest.fixture
async def health_service() -> AsyncIterator[tuple[health.aio.HealthServicer, int]]:
    """A real grpc.health.v1 service on a free port of 127.0.0.1."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(None)


@pytest.fixture
def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def run_probe(code: str, port: int) -> int:
    """Exit status of the probe in a container whose service listens on `port`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env={**os.environ, LISTEN_VARIABLE: f"0.0.0.0:{port}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        await process.communicate()
    assert process.returncode is not None
    return process.returncode


async def test_probe_passes_when_the_service_is_serving(
    probe: str, health_service: tuple[health.aio.HealthServicer, int]
) -> None:
    servicer, port = health_service
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert await run_probe(probe, port) == 0


async def test_probe_fails_when_the_service_is_not_serving(
    probe: str, health_service: tuple[health.aio.HealthServicer, int]
) -> None:
    servicer, port = health_service
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await servicer.set("daily_aggregator.v1.Aggregator", health_pb2.HealthCheckResponse.SERVING)
    assert await run_probe(probe, port) != 0


async def test_probe_fails_when_nothing_listens(probe: str, closed_port: int) -> None:
    assert await run_probe(probe, closed_port) != 0
