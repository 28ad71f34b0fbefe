"""Static checks of the container deployment: no Docker daemon needed.

`docker-compose.yml` is validated against the Compose Specification JSON schema. The schema
is the copy vendored by the `check-jsonschema` package (a test dependency, taken from the
compose-spec project via SchemaStore), so the check runs offline. The Dockerfile is read line
by line (continuations joined) and checked for what the deployment relies on.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from ingest.config import Settings, load_settings
from ingest.credentials import generate_key
from ingest.objectstore import parse_store_url

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = {"migrate", "gateway", "consumer", "media"}
ENV_PREFIX = "CRM_INGEST_"


# --- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def compose_schema() -> dict[str, Any]:
    vendored = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text(encoding="utf-8"))
    return schema


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, whichever of the two Compose forms it is written in."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: value for name, _, value in pairs}
    return {name: "" if value is None else str(value) for name, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition (the short list form means `service_started`)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = compose_schema()
    assert schema.get("title") == "Compose Specification"
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_catches_mistakes(compose: dict[str, Any]) -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["depends_on"]["migrate"]["condition"] = "when_ready"
    broken["services"]["consumer"]["replica"] = 2  # typo of deploy.replicas
    assert len(list(validator.iter_errors(broken))) >= 2


def test_app_services_share_one_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    built = {name: s for name, s in services.items() if "build" in s}
    assert set(built) == APP_SERVICES
    builds = {json.dumps(s["build"], sort_keys=True) for s in built.values()}
    images = {s.get("image") for s in built.values()}
    assert len(builds) == 1
    assert len(images) == 1
    build = next(iter(built.values()))["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert context == "."
    if isinstance(build, dict):
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"


def test_consumer_can_scale(services: dict[str, dict[str, Any]]) -> None:
    consumer = services["consumer"]
    assert "container_name" not in consumer
    assert "ports" not in consumer
    assert int(consumer["deploy"]["replicas"]) >= 2
    assert consumer.get("command") == ["consume"]


def test_media_worker_runs_apart_and_can_scale(services: dict[str, dict[str, Any]]) -> None:
    media = services["media"]
    assert media.get("command") == ["media", "work"]
    assert "container_name" not in media
    assert "ports" not in media


def test_gateway_publishes_the_webhook_port(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    command = gateway.get("command")
    assert command[0] == "gateway"
    assert "0.0.0.0" in command
    assert any(str(port).endswith(":8080") for port in gateway["ports"])


def test_kafka_is_apache_kafka_in_kraft_mode(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert re.fullmatch(rf"{node_id}@[\w.-]+:\d+", env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
    listeners = env["KAFKA_LISTENERS"]
    assert "PLAINTEXT://" in listeners
    assert f"{env['KAFKA_CONTROLLER_LISTENER_NAMES']}://" in listeners
    assert "CONTROLLER" not in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert not any(name.startswith("KAFKA_ZOOKEEPER") for name in env)
    assert "zookeeper" not in " ".join(services)
    health = " ".join(kafka["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in health


def test_postgres_is_16_with_a_healthcheck_and_a_volume(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_migrate_runs_once_before_gateway_and_consumer(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate = services["migrate"]
    script = " ".join([*migrate.get("entrypoint", []), *migrate["command"]])
    assert script.index("crm-ingest migrate") < script.index("crm-ingest topics")
    assert migrate.get("restart", "no") == "no"
    assert depends_on(migrate) == {"postgres": "service_healthy", "kafka": "service_healthy"}
    for name in ("gateway", "consumer", "media"):
        assert depends_on(services[name]).get("migrate") == "service_completed_successfully"


def test_app_services_reach_the_compose_kafka_and_postgres(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka_env = environment(services["kafka"])
    advertised = dict(
        item.split("://", 1) for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    postgres_env = environment(services["postgres"])
    for name in APP_SERVICES:
        env = environment(services[name])
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == advertised["PLAINTEXT"]
        url = urlsplit(env["DATABASE_URL"])
        assert url.scheme == "postgresql"
        assert url.hostname == "postgres"
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.password == postgres_env["POSTGRES_PASSWORD"]
        assert url.path == f"/{postgres_env['POSTGRES_DB']}"
        assert env["CRM_INGEST_PRODUCER_IDEMPOTENCE"] == "true"  # real Apache Kafka


# Values an operator must supply (no default in the compose file), as valid examples.
OPERATOR_SUPPLIED = {"CRM_INGEST_SECRETS_KEY": generate_key()}


def test_the_secrets_key_has_no_default_in_the_compose_file(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("migrate", "gateway", "consumer"):
        value = environment(services[name])["CRM_INGEST_SECRETS_KEY"]
        assert value.startswith("${CRM_INGEST_SECRETS_KEY:?"), name


def test_every_crm_ingest_variable_is_a_setting_with_a_valid_value(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, str] = {}
    for service in services.values():
        for name, value in environment(service).items():
            if name.startswith(ENV_PREFIX):
                seen[name] = value
    assert seen, "the compose file sets no CRM_INGEST_* variable"
    unknown = [n for n in seen if n[len(ENV_PREFIX) :].lower() not in Settings.model_fields]
    assert unknown == []
    for name, value in seen.items():
        # `${NAME:?why}`: the operator must supply it (compose refuses to start without it).
        required = re.fullmatch(r"\$\{([A-Z_]+):\?[^}]*\}", value)
        if required is not None:
            assert required.group(1) == name
            value = OPERATOR_SUPPLIED[name]
        monkeypatch.setenv(name, value)
    settings = load_settings()  # raises SettingsError naming a bad value
    assert settings.partitions == int(seen.get("CRM_INGEST_PARTITIONS", settings.partitions))


def test_media_store_is_minio_with_its_bucket_created_before_the_app(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    minio = services["minio"]
    assert minio["image"].startswith("quay.io/minio/minio:RELEASE.")
    assert "/data" in minio["command"]
    assert minio["volumes"][0].split(":")[0] in compose["volumes"]
    assert "mc ready local" in " ".join(minio["healthcheck"]["test"])
    root = environment(minio)

    location = parse_store_url(environment(services["gateway"])["CRM_INGEST_MEDIA_STORE"])
    assert location.scheme == "s3"
    init = services["media-bucket"]
    assert init.get("restart", "no") == "no"
    assert depends_on(init) == {"minio": "service_healthy"}
    command = init["command"]
    assert command[:2] == ["mb", "--ignore-existing"]  # idempotent: a second `up` succeeds
    alias, _, bucket = command[-1].partition("/")
    assert bucket == location.root
    host = urlsplit(environment(init)[f"MC_HOST_{alias}"])
    assert (host.hostname, host.port) == ("minio", 9000)
    assert (host.username, host.password) == (root["MINIO_ROOT_USER"], root["MINIO_ROOT_PASSWORD"])
    for name in ("gateway", "consumer", "media"):
        assert depends_on(services[name]).get("media-bucket") == "service_completed_successfully"


def test_app_services_store_media_in_the_compose_minio(
    services: dict[str, dict[str, Any]],
) -> None:
    root = environment(services["minio"])
    for name in ("gateway", "consumer", "media"):
        env = environment(services[name])
        assert env["CRM_INGEST_MEDIA_STORE"].startswith("s3://")
        endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "minio", 9000)
        assert env["AWS_ACCESS_KEY_ID"] == root["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == root["MINIO_ROOT_PASSWORD"]
        assert env["AWS_REGION"]


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for op, args in self.instructions if op == instruction]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, `\\` continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        op, _, args = (pending + stripped).partition(" ")
        instructions.append((op.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_stages(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for op, args in dockerfile_instructions(text):
        if op == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        elif op != "ARG" or stages:
            stages[-1].instructions.append((op, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return [str(v) for v in value]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def stages(dockerfile: str) -> list[Stage]:
    return dockerfile_stages(dockerfile)


def base_image(stage: Stage, dockerfile: str) -> str:
    """The base image with `ARG` defaults substituted."""
    defaults = dict(
        re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, flags=re.MULTILINE),
    )
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], stage.base)


def test_dockerfile_is_multi_stage_on_slim_python(dockerfile: str, stages: list[Stage]) -> None:
    assert len(stages) >= 2
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue  # built on an earlier stage
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base_image(stage, dockerfile))


def test_runtime_stage_installs_only_the_built_package(stages: list[Stage]) -> None:
    runtime = stages[-1]
    copies = runtime.args("COPY")
    assert copies, "the runtime stage takes nothing from the builder"
    assert all(c.startswith("--from=") for c in copies), copies
    runs = " ".join(runtime.args("RUN"))
    assert "pip install" not in runs or ".whl" in runs
    for compiler in ("build-essential", "gcc", "g++", "libpq-dev"):
        assert compiler not in runs
    everything = " ".join(args for stage in stages for args in stage.args("RUN"))
    assert not re.search(r"\[[^\]]*\b(test|embedded)\b", everything), "extras in the image"
    assert ".whl" in everything


def test_runtime_runs_as_a_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].args("USER")
    assert users, "no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_entrypoint_and_default_command(stages: list[Stage]) -> None:
    runtime = stages[-1]
    assert exec_form(runtime.args("ENTRYPOINT")[-1]) == ["crm-ingest"]
    assert exec_form(runtime.args("CMD")[-1]) == ["gateway", "--host", "0.0.0.0"]
    exposed = {port for args in runtime.args("EXPOSE") for port in args.split()}
    assert {"8080", "9100"} <= exposed


def test_environment_and_healthcheck(stages: list[Stage]) -> None:
    runtime = stages[-1]
    env = " ".join(runtime.args("ENV"))
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    (health,) = runtime.args("HEALTHCHECK")
    _, _, command = health.partition("CMD ")
    argv = exec_form(command) if command.startswith("[") else shlex.split(command)
    assert argv[0].startswith("python")
    assert "/healthz" in " ".join(argv)
    assert "curl" not in health


# --- .dockerignore --------------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching rule wins).

    Simplified to what this repo's file uses: a rule that matches a parent matches its
    children, and `**/` also matches at the top.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.removeprefix("!").rstrip("/")
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatchcase(p, c) for p in prefixes for c in candidates):
            result = not negated
    return result


def test_dockerignore_sends_only_what_the_build_copies(stages: list[Stage]) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    sources = [
        word
        for args in stages[0].args("COPY")
        if not args.startswith("--from=")
        for word in args.split()[:-1]
    ]
    assert {"pyproject.toml", "ingest", "handlers", "sql"} <= set(sources)
    for source in sources:
        assert not ignored(source, patterns), source
    for local in (".venv", ".git", "tests", ".crm-ingest", ".hypothesis", "ingest/__pycache__"):
        assert ignored(local, patterns), local
