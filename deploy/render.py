"""Render the shipped nginx.conf and monitoring/prometheus.yml for a stack on loopback ports.

The compose files address services by name (`gateway:8080`, `triton:8002`); tests and bare-metal runs
have processes on 127.0.0.1 instead. Only addresses, ports and writable paths change: every other line
comes from the shipped files, and each substitution must match exactly once, so a config edit that
breaks the rendering fails loudly instead of silently testing something else.

    python -m deploy.render nginx --out DIR --listen 127.0.0.1:8080 --upstream 127.0.0.1:9001 ...
    python -m deploy.render prometheus --out DIR --target triton=127.0.0.1:8002 --target gateway=...
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "nginx.conf"
NGINX_INCLUDES = ROOT / "nginx.d"
MONITORING = ROOT / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"


class RenderError(ValueError):
    """The shipped config no longer has the shape the renderer substitutes into."""


def _sub_once(pattern: str, repl: str | Callable[[re.Match], str], text: str, what: str) -> str:
    new, count = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if count != 1:
        raise RenderError(f"expected exactly one {what}, found {count}")
    return new


@dataclass
class TLS:
    """Enable the shipped tls.conf.example with these files on this address."""

    listen: str
    certificate: Path
    key: Path


def render_nginx(
    out_dir: Path,
    *,
    listen: str,
    upstreams: list[str],
    access_log: Path | None = None,
    tls: TLS | None = None,
    rate_limit: str | None = None,
    source: Path = NGINX_CONF,
) -> Path:
    """Write `out_dir/nginx.conf` (+ `nginx.d/`) and return its path.

    `rate_limit` (e.g. "5r/s") enables the shipped ratelimit.conf.example at that rate.
    """
    if not upstreams:
        raise ValueError("at least one upstream is needed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = _nginx_text(source.read_text(), listen, upstreams, access_log, rate_limit)
    text = _writable_paths(text, out_dir)
    _includes(out_dir, tls, rate_limit)
    conf = out_dir / "nginx.conf"
    conf.write_text(text)
    return conf


def _nginx_text(text: str, listen: str, upstreams: list[str], access_log: Path | None, rate_limit: str | None) -> str:
    """The shipped nginx.conf with the upstreams, the listen address, the access log and the rate set."""
    text = _sub_once(
        r"^(\s*)server gateway:8080(\s[^;]*)?;$",
        lambda m: "\n".join(f"{m[1]}server {u}{m[2] or ''};" for u in upstreams),
        text,
        "`server gateway:8080` upstream line",
    )
    text = _sub_once(r"^(\s*)listen 8080;$", rf"\g<1>listen {listen};", text, "`listen 8080;`")
    if access_log is not None:
        text = _sub_once(
            r"^(\s*)access_log /dev/stdout embeddings;$",
            rf"\g<1>access_log {access_log} embeddings;",
            text,
            "`access_log /dev/stdout embeddings;`",
        )
    if rate_limit is not None:
        text = _sub_once(
            r"(limit_req_zone \S+ zone=\S+) rate=\S+;", rf"\g<1> rate={rate_limit};", text, "limit_req_zone"
        )
    return text


def _writable_paths(text: str, out_dir: Path) -> str:
    """Writable paths for an unprivileged, side-by-side nginx; the compiled-in defaults stay in the image."""
    tmp = out_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    text = f"pid {out_dir / 'nginx.pid'};\n" + text
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return _sub_once(r"^http \{\n", lambda m: m[0] + temp_paths, text, "`http {` block")


def _includes(out_dir: Path, tls: TLS | None, rate_limit: str | None) -> None:
    """`out_dir/nginx.d/`: the shipped includes, TLS and the rate limit turned on when asked."""
    includes = out_dir / "nginx.d"
    shutil.rmtree(includes, ignore_errors=True)
    shutil.copytree(NGINX_INCLUDES, includes, ignore=shutil.ignore_patterns("*.conf"))
    if tls is not None:
        example = (includes / "tls" / "tls.conf.example").read_text()
        example = _sub_once(r"^listen \S+ ssl;$", f"listen {tls.listen} ssl;", example, "TLS listen")
        example = _sub_once(r"^ssl_certificate\s+\S+;$", f"ssl_certificate {tls.certificate};", example, "cert")
        example = _sub_once(r"^ssl_certificate_key\s+\S+;$", f"ssl_certificate_key {tls.key};", example, "key")
        (includes / "tls" / "tls.conf").write_text(example)
    if rate_limit is not None:
        shutil.copy(includes / "ratelimit" / "ratelimit.conf.example", includes / "ratelimit" / "ratelimit.conf")


def render_prometheus(
    out_dir: Path,
    *,
    targets: dict[str, list[str]],
    scrape_interval: str | None = None,
    source: Path = PROMETHEUS_YML,
) -> Path:
    """Write `out_dir/prometheus.yml` (+ its rule files) with every job scraping the given static targets.

    Every job of the shipped config must be given targets, and only those jobs: relabelling, paths and
    the other settings are kept as shipped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(source.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    if set(jobs) != set(targets):
        raise RenderError(f"prometheus.yml jobs {sorted(jobs)} differ from the targets given {sorted(targets)}")
    for name, job in jobs.items():
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets[name])}]
    if scrape_interval is not None:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    for rule_file in config.get("rule_files", []):
        shutil.copy(source.parent / rule_file, out_dir / rule_file)
    out = out_dir / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.render", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ngx = sub.add_parser("nginx", help="render nginx.conf for loopback gateways")
    ngx.add_argument("--out", type=Path, required=True)
    ngx.add_argument("--listen", default="127.0.0.1:8080")
    ngx.add_argument("--upstream", action="append", required=True, help="host:port of a gateway (repeat)")
    prom = sub.add_parser("prometheus", help="render prometheus.yml for loopback targets")
    prom.add_argument("--out", type=Path, required=True)
    prom.add_argument("--target", action="append", required=True, help="job=host:port (repeat)")
    prom.add_argument("--scrape-interval")
    args = parser.parse_args(argv)
    if args.what == "nginx":
        path = render_nginx(args.out, listen=args.listen, upstreams=args.upstream)
    else:
        targets: dict[str, list[str]] = {}
        for item in args.target:
            job, _, address = item.partition("=")
            targets.setdefault(job, []).append(address)
        path = render_prometheus(args.out, targets=targets, scrape_interval=args.scrape_interval)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
