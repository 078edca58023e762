"""``torpor``: serve, deploy, list, inspect, invoke and delete functions."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from torpor import __version__
from torpor.cli import client as client_module
from torpor.cli.client import ApiClient, CliError, error_sentence
from torpor.constants import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SERVER
from torpor.errors import SpecError, TorporError

app = typer.Typer(
    name="torpor",
    help="torpor: serverless inference that scales to zero and wakes in milliseconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
if not out.is_terminal:  # piped output: never truncate ids to 80 columns
    out = Console(width=200)
err = Console(stderr=True)
_debug = False

F = TypeVar("F", bound=Callable[..., Any])
LOG_LEVELS = ("debug", "info", "warning", "error")

Server = Annotated[
    str, typer.Option("--server", envvar="TORPOR_SERVER", help="torpor server URL.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"torpor {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="TORPOR_API_KEY",
                     help="API key to send (default: DATA_DIR/admin.key of this machine, "
                          "DATA_DIR from TORPOR_HOME or .torpor)."),
    ] = None,
) -> None:
    global _debug
    _debug = debug
    client_module.api_key_option = api_key


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port for the gateway and the API.")] = DEFAULT_PORT,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar="TORPOR_HOME", help="Where torpor keeps its state.")
    ] = Path(DEFAULT_DATA_DIR),
    deploy: Annotated[
        list[Path] | None, typer.Option("--deploy", help="Deploy this spec at start (repeatable).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[
        str, typer.Option("--log-format", help="text, or json: one JSON object a line.")
    ] = "text",
    config: Annotated[
        Path | None,
        typer.Option(envvar="TORPOR_CONFIG",
                     help="Server config YAML (price table under `prices:`); "
                          "default DATA_DIR/config.yaml if present."),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option("--auth", metavar="on|off",
                     help="API keys for the control API and `auth: key` functions (default on, "
                          "or the config's `auth:`); off is accepted only on a loopback --host."),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option("--ray", metavar="ADDRESS",
                     help="Run instances on a Ray cluster: `auto` or its GCS address host:port "
                          "(also `backend: ray` and `ray_address` in the config)."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option("--store", metavar="URL", envvar="TORPOR_STORE",
                     help="Keep the store in PostgreSQL: postgresql://USER@HOST[:PORT]/DATABASE "
                          "(also `store:` in the config; default: SQLite in DATA_DIR/torpor.db). "
                          "Needs pip install 'torpor\\[postgres]'."),
    ] = None,
) -> None:
    """Run the gateway, control API, reconciler and store in one process.

    On the first start (no admin key yet) it creates an admin API key, prints it once in its log
    and writes it to DATA_DIR/admin.key (mode 0600), where the CLI on this machine finds it.
    """
    from torpor.server import serve as run_server

    if not 1 <= port <= 65535:
        raise CliError(f"--port must be from 1 to 65535, got {port}")
    if log_level.lower() not in LOG_LEVELS:
        raise CliError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    run_server(host, port, data_dir, deploy or [], log_level, config, log_format, ray_address=ray,
               store=store, auth=auth)


@app.command()
def deploy(
    path: Annotated[Path, typer.Argument(help="A folder with torpor.yaml, or a spec file.")],
    traffic: Annotated[int | None, typer.Option(
        "--traffic", help="The new revision's percent of the traffic; the rest stays on the "
                          "revisions serving now (default 100).")] = None,
    rollout: Annotated[str | None, typer.Option(
        "--rollout", help="Roll the new revision out in steps, e.g. 10,50,100 (the last 100); "
                          "rolled back by itself if its error rate exceeds the old one's.")] = None,
    every: Annotated[str, typer.Option(
        "--every", help="Time between rollout steps: 60s, 5m, or seconds.")] = "60s",
    max_error_margin: Annotated[float, typer.Option(
        "--max-error-margin", help="Roll back when the new error rate exceeds the old one's by "
                                   "more than this (0.05: 5 points).")] = 0.05,
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """Validate a spec, upload its folder and deploy it (a new revision if the name exists).

    The folder is packed (minus what `.torporignore` lists) and uploaded; the server keeps it by
    content, so an unchanged folder is not sent again.
    """
    from torpor.cli.upload import upload_folder
    from torpor.spec import is_package_model, load_spec_file, resolve_model_path

    spec, raw, base_dir = load_spec_file(path)
    source = str((path / "torpor.yaml") if path.is_dir() else path)
    client = ApiClient(server)
    body: dict[str, Any] = {"spec": raw, "source": source, "created_by": _who(),
                            "code": upload_folder(client, base_dir, out)}
    if traffic is not None:
        body["traffic"] = traffic
    if rollout is not None:
        body["rollout"] = {"steps": _percents(rollout), "every_s": _seconds(every, "--every"),
                           "max_error_margin": max_error_margin}
    model_path = resolve_model_path(spec, base_dir)
    if model_path is not None and not model_path.is_relative_to(base_dir) and not is_package_model(spec):
        body["model"] = upload_folder(client, model_path, out)  # model.path outside the folder
    fn = client.api("POST", "/api/v1/functions", json=body)
    if as_json:
        _print_json(fn)
        return
    out.print(f"deployed [bold]{fn['name']}[/] revision {fn['revision']} → "
              f"{server.rstrip('/')}{fn['url']}  traffic {_split(fn['traffic'])}")


def _percents(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise CliError(f"--rollout: {value!r} is not a list of percents like 10,50,100") from None


def _seconds(value: str, option: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (value[:-1], units[value[-1]]) if value[-1:] in units else (value, 1.0)
    try:
        return float(number) * unit
    except ValueError:
        raise CliError(f"{option}: {value!r} is not a duration like 60s or 5m") from None


def _who() -> str:
    """Who deploys, for the revision's record (the key's owner once keys name one)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _split(traffic: dict[str, Any]) -> str:
    weights = " ".join(f"{r}={w}%" for r, w in traffic["weights"].items())
    tags = " ".join(f"@{t}→{r}" for t, r in traffic["tags"].items())
    return f"{weights} {tags}".strip()


@app.command()
def revisions(name: str, server: Server = DEFAULT_SERVER, as_json: AsJson = False) -> None:
    """List a function's revisions with their traffic share, tags and instances."""
    rows = ApiClient(server).api("GET", f"/api/v1/functions/{name}/revisions")
    if as_json:
        _print_json(rows)
        return
    table = Table("REV", "TRAFFIC", "TAGS", "INSTANCES", "REQUESTS", "ERRORS", "CODE", "CREATED",
                  "BY", "SOURCE")
    for row in rows:
        table.add_row(str(row["revision"]) + (" (latest)" if row["latest"] else ""),
                      f"{row['percent']}%", ", ".join(row["tags"]) or "-", str(row["instances"]),
                      str(row["requests"]), str(row["errors"]), (row["code_digest"] or "-")[:12],
                      _when(row["created_at"]), row["created_by"] or "-", row["source"])
    out.print(table)


@app.command()
def traffic(
    name: str,
    weights: Annotated[list[str] | None, typer.Argument(
        help="REV=PERCENT pairs summing to 100, e.g. 3=90 4=10 (none: show the split).")] = None,
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """Show or set how a function's traffic is split between its revisions."""
    client = ApiClient(server)
    path = f"/api/v1/functions/{name}/traffic"
    if weights:
        pairs: dict[str, Any] = {}
        for pair in weights:
            revision, sep, percent = pair.partition("=")
            if not sep or not percent.strip().isdigit():
                raise CliError(f"traffic.{revision or pair}: {pair!r} is not REV=PERCENT, e.g. 3=90")
            pairs[revision.strip()] = int(percent)
        result = client.api("PUT", path, json={"weights": pairs})
    else:
        result = client.api("GET", path)
    _print_traffic(result, as_json)


def _print_traffic(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(result)
        return
    out.print(f"{result['function']}: {_split(result)}")


@app.command()
def tag(
    name: str,
    revision: Annotated[int, typer.Argument(help="The revision the tag reaches.")],
    tag_name: Annotated[str, typer.Argument(metavar="TAG", help="/fn/NAME@TAG/ reaches REVISION.")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove the tag instead.")] = False,
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """Tag a revision: /fn/NAME@TAG/... reaches only that revision."""
    path = f"/api/v1/functions/{name}/tags/{tag_name}"
    client = ApiClient(server)
    method, body = ("DELETE", None) if remove else ("PUT", {"revision": revision})
    result = client.api(method, path, json=body)
    _print_traffic(result, as_json)


@app.command()
def rollback(
    name: str,
    revision: Annotated[int | None, typer.Argument(
        help="Where all traffic goes (default: the revision before the newest taking traffic).")
    ] = None,
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """Move all traffic back to one revision in one step; requests in flight finish where they are."""
    result = ApiClient(server).api("POST", f"/api/v1/functions/{name}/rollback",
                                   json={"revision": revision})
    _print_traffic(result, as_json)


@app.command("ls")
def list_functions(server: Server = DEFAULT_SERVER, as_json: AsJson = False) -> None:
    """List deployed functions."""
    functions = ApiClient(server).api("GET", "/api/v1/functions")
    if as_json:
        _print_json(functions)
        return
    table = Table("NAME", "REV", "KIND", "STATUS", "INSTANCES", "IN FLIGHT", "QUEUED", "URL")
    for fn in functions:
        table.add_row(fn["name"], str(fn["revision"]), fn["kind"], fn["status"],
                      str(fn["instances"]), str(fn["in_flight"]), str(fn["queued"]), fn["url"])
    out.print(table)


@app.command()
def get(name: str, server: Server = DEFAULT_SERVER, as_json: AsJson = False) -> None:
    """Show one function: spec, status, instances and recent events."""
    fn = ApiClient(server).api("GET", f"/api/v1/functions/{name}")
    if as_json:
        _print_json(fn)
        return
    out.print(f"[bold]{fn['name']}[/] revision {fn['revision']} ({fn['kind']}) — {fn['status']}")
    out.print(f"  url {fn['url']}  concurrency {fn['concurrency']}  "
              f"instances {fn['min_instances']}..{fn['max_instances']}  source {fn['source']}")
    out.print(f"  traffic {_split(fn['traffic'])}")
    if "scaling_policy" in fn:
        out.print(f"  scaling {fn['scaling_policy']} ({fn['scaling_policy_why']}): "
                  f"desired {fn['desired']} — {fn['scaling_reason']}")
    template = fn.get("template")
    if template and template.get("state") == "retired":
        out.print(f"  template retired at {_when(template['retired_at'])}: {template['reason']}")
    elif template:
        memory = template.get("memory_bytes")
        held = f", holds {memory / 2**20:.0f} MB" if isinstance(memory, int) else ""
        out.print(f"  template {template['state']} (pid {template.get('pid') or '-'}{held})")
    if fn["last_error"]:
        err.print(f"[red]last error:[/] {fn['last_error']}")
    if fn.get("waiting"):
        out.print(f"[yellow]waiting:[/] {fn['waiting']}")
    _instance_table(fn["instance_list"])
    if fn["events"]:
        out.print("events:")
        for event in reversed(fn["events"][:15]):
            out.print(f"  {_when(event['at'])}  {event['kind']:<13} {event['message']}")


def _gpus(placement: dict[str, Any] | None) -> str:
    """``0:6144MB`` for a slice of gpu 0, ``0,1`` for whole GPUs, ``-`` for none."""
    if not placement or not placement.get("gpus"):
        return "-"
    devices = ",".join(str(g) for g in placement["gpus"])
    return f"{devices}:{placement['gpu_memory_mb']}MB" if len(placement["gpus"]) == 1 else devices


def _ms(value: Any) -> str:
    return f"{value * 1000:.1f}" if isinstance(value, int | float) else "-"


def _instance_table(instances: list[dict[str, Any]]) -> None:
    """Instances with their cold start in ms: fork or spawn (start → listening, setup included),
    setup, initialize (/initialize: warmup), first response, total (start → ready)."""
    table = Table("ID", "FUNCTION", "REV", "STATE", "NODE", "POOL", "GPUS", "IN FLIGHT", "STARTED",
                  "MODE", "FORK/SPAWN MS", "SETUP MS", "INIT MS", "1ST RESP MS", "COLD START MS")
    for i in instances:
        cold = i.get("cold_start") or {}
        table.add_row(i["id"], i["function"], str(i["revision"]), i["state"], i.get("node") or "-",
                      i.get("pool") or "-", _gpus(i.get("placement")),
                      str(i.get("in_flight", 0)), _when(i["started_at"]), cold.get("mode", "-"),
                      _ms(cold.get("fork_s", cold.get("spawn_s"))), _ms(cold.get("setup_s")),
                      _ms(cold.get("initialize_s")), _ms(cold.get("first_response_s")),
                      _ms(cold.get("total_s")))
    out.print(table)


@app.command()
def instances(
    name: Annotated[str | None, typer.Argument(help="Only this function's instances.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include stopped and failed ones.")] = False,
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """List instances (live ones unless --all)."""
    params: dict[str, Any] = {"all": all_}
    if name:
        params["function"] = name
    rows = ApiClient(server).api("GET", "/api/v1/instances", params=params)
    if as_json:
        _print_json(rows)
        return
    _instance_table(rows)


@app.command()
def invoke(
    name: str,
    data: Annotated[str | None, typer.Option("--data", "-d", help="JSON body.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Send this file.")] = None,
    path: Annotated[str, typer.Option(help="Path under /fn/NAME/.")] = "invoke",
    server: Server = DEFAULT_SERVER,
) -> None:
    """Call a function and print its response body."""
    if data is not None and file is not None:
        raise CliError("give either --data or --file, not both")
    headers = {"content-type": "application/json"}
    if data is not None:
        try:
            json.loads(data)
        except ValueError as exc:
            raise CliError(f"--data is not valid JSON: {exc}") from None
        body = data.encode()
    elif file is not None:
        try:
            body = file.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read --file {file}: {exc.strerror}") from None
        if file.suffix != ".json":
            headers = {"content-type": "application/octet-stream"}
    else:
        body = b"{}"
    response = ApiClient(server).request(
        "POST", f"/fn/{name}/{path.lstrip('/')}", content=body, headers=headers
    )
    if response.status_code >= 400:
        raise CliError(f"{name} answered {response.status_code}: {error_sentence(response)}")
    sys.stdout.write(response.text + ("" if response.text.endswith("\n") else "\n"))


@app.command()
def provision(
    name: str,
    target: Annotated[int | None, typer.Option(help="Provisioned instances to keep.")] = None,
    policies: Annotated[
        Path | None,
        typer.Option(help="provision.json (Function Compute's shape) or torpor's YAML/JSON shape."),
    ] = None,
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """Show or set provisioned instances, with target-tracking and scheduled policies."""
    client = ApiClient(server)
    path = f"/api/v1/functions/{name}/provision"
    if policies is not None:
        import yaml

        from torpor.safe_yaml import read_yaml

        try:
            data = read_yaml(policies)
        except OSError as exc:
            raise CliError(f"cannot read --policies {policies}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise CliError(f"--policies {policies} is not valid JSON or YAML: {exc}") from None
        if not isinstance(data, dict):
            raise CliError(f"--policies {policies} must hold a mapping of fields")
        if target is not None:
            data["target"] = target
        result = client.api("PUT", path, json=data)
    elif target is not None:
        config = client.api("GET", path)["config"]
        result = client.api("PUT", path, json={**config, "target": target})
    else:
        result = client.api("GET", path)
    if as_json:
        _print_json(result)
        return
    table = Table("FUNCTION", "TARGET", "CURRENT", "CONFIGURED", "POLICIES")
    config = result["config"]
    names = [f"tracking:{p['name']}" for p in config["target_tracking"]]
    names += [f"scheduled:{a['name']}" for a in config["scheduled"]]
    table.add_row(result["function"], str(result["target"]), str(result["current"]),
                  str(result["configured_target"]), ", ".join(names) or "-")
    out.print(table)


@app.command()
def bill(
    since: Annotated[str | None, typer.Option(
        help="Start: ISO 8601, epoch seconds, or a duration ago (30m, 6h, 7d).")] = None,
    until: Annotated[str | None, typer.Option(help="End, same forms (default: now).")] = None,
    function: Annotated[str | None, typer.Option(help="Only this function.")] = None,
    by: Annotated[str, typer.Option(
        help="Group the table by `function`, `pool` or `revision`.")] = "function",
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """What each function's instances cost, against always-on hardware while it existed (a GPU
    server per GPU instance for a GPU function; its own CPU and memory kept on for a CPU one)."""
    if by not in ("function", "pool", "revision"):
        raise CliError(f"--by must be function, pool or revision, not {by!r}")
    params = {k: _when_arg(v) for k, v in (("since", since), ("until", until)) if v}
    if function:
        params["function"] = function
    result = ApiClient(server).api("GET", "/api/v1/billing", params=params)
    if as_json:
        _print_json(result)
        return
    currency = result["currency"]
    if by == "revision":
        revs = Table("FUNCTION", "REV", "ACTIVE S", "IDLE S", f"COST {currency}")
        for line in result["revisions"]:
            revs.add_row(line["function"], str(line["revision"]), line["active_seconds"],
                         line["idle_seconds"], line["cost"])
        revs.add_row("total", "", "", "", result["cost"])
        out.print(revs)
        return
    if by == "pool":
        pools = Table("POOL", "ACTIVE S", "IDLE S", f"COST {currency}")
        for line in result["pools"]:
            pools.add_row(line["pool"], line["active_seconds"], line["idle_seconds"], line["cost"])
        pools.add_row("total", "", "", result["cost"])
        out.print(pools)
        return
    table = Table("FUNCTION", "ACTIVE S", "IDLE S", f"COST {currency}",
                  f"ALWAYS-ON {currency}", "ALWAYS-ON IS", "SAVING")
    for line in result["functions"]:
        pct = f"{line['saving_pct']}%" if line["saving_pct"] is not None else "-"
        basis = {"gpu": "GPU server", "cpu": "own CPU+memory"}.get(line.get("always_on_basis"), "-")
        table.add_row(line["function"], line["active_seconds"], line["idle_seconds"],
                      line["cost"], line["always_on_cost"],
                      f"{basis} × {line.get('always_on_seconds', '-')} s", pct)
    total_pct = f"{result['saving_pct']}%" if result["saving_pct"] is not None else "-"
    table.add_row("total", "", "", result["cost"], result["always_on_cost"], "", total_pct)
    out.print(table)


def _when_arg(value: str) -> str:
    """A duration like 30m, 6h or 7d means that long before now; anything else goes as given."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(value) > 1 and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        import time

        return str(time.time() - float(value[:-1]) * units[value[-1]])
    return value


@app.command()
def nodes(server: Server = DEFAULT_SERVER, as_json: AsJson = False) -> None:
    """The machines instances run on: pool, resources and live instances of each."""
    rows = ApiClient(server).api("GET", "/api/v1/nodes")
    if as_json:
        _print_json(rows)
        return
    table = Table("ID", "ADDRESS", "POOL", "ALIVE", "TOTAL", "ALLOCATED", "INSTANCES")
    for node in rows:
        table.add_row(node["id"], node["address"], node["pool"], "yes" if node["alive"] else "no",
                      _resources(node["resources_total"]), _resources(node["resources_allocated"]),
                      ", ".join(node["instances"]) or "-")
    out.print(table)
    gpus = [(node["id"], gpu) for node in rows for gpu in node.get("gpus", [])]
    if gpus:
        gpu_table = Table("NODE", "GPU", "NAME", "MEMORY MB", "ALLOCATED MB", "INSTANCES")
        for node_id, gpu in gpus:
            gpu_table.add_row(node_id, str(gpu["index"]), gpu["name"], str(gpu["memory_mb"]),
                              str(gpu["allocated_mb"]), ", ".join(gpu["instances"]) or "-")
        out.print(gpu_table)


def _resources(values: dict[str, float]) -> str:
    return " ".join(f"{name}={value:g}" for name, value in sorted(values.items())) or "-"


@app.command()
def logs(
    name: str,
    instance: Annotated[str | None, typer.Option(
        "--instance", "-i", help="Only this instance (or template-REVISION).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    since: Annotated[str | None, typer.Option(
        help="Only instances and templates that wrote since then: ISO 8601, epoch seconds, "
             "or a duration ago (30m, 6h).")] = None,
    tail: Annotated[int, typer.Option(help="Lines per instance to start with.")] = 100,
    server: Server = DEFAULT_SERVER,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Print a function's instance and template logs (stdout and stderr); -f follows them."""
    params: dict[str, Any] = {"tail": tail, "follow": follow}
    if instance:
        params["instance"] = instance
    if since:
        params["since"] = _when_arg(since)
    for line in ApiClient(server).lines(f"/api/v1/functions/{name}/logs", params):
        if not line:
            continue
        if as_json:
            sys.stdout.write(line + "\n")
        else:
            record = json.loads(line)
            mark = "!" if record["stream"] == "stderr" else " "
            sys.stdout.write(f"{record['source']}{mark}| {record['line']}\n")
        sys.stdout.flush()


@app.command()
def simulate(
    trace: Annotated[Path, typer.Option("--trace", help="Request trace file.")],
    spec: Annotated[Path, typer.Option("--spec", help="torpor.yaml (or its folder).")],
    trace_format: Annotated[str | None, typer.Option(
        "--format", help="torpor, azure_llm, mooncake, alibaba_genai or azure_functions "
                         "(default: detected).")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a spec field: scaling.idle_mode=true (repeatable).")] = None,
    compare: Annotated[list[str] | None, typer.Option(
        "--compare", help="What-if axis: scaling.provisioned=0,1 (repeatable; runs every "
                          "combination).")] = None,
    prices: Annotated[Path | None, typer.Option(
        "--prices", help="Server config YAML whose `prices:` section prices the run.")] = None,
    timings: Annotated[Path | None, typer.Option(
        "--timings", help="Measured timings: JSON (cold_start_s, thaw_s, ...) or a saved /metrics.")
    ] = None,
    provision: Annotated[Path | None, typer.Option(
        "--provision", help="Provisioning policies, as `torpor provision --policies` takes them "
                            "(replace scaling.provisioned; simulated time starts 1970-01-01T00:00Z).")
    ] = None,
    cold_start_s: Annotated[float | None, typer.Option(help="Start → ready, seconds.")] = None,
    thaw_s: Annotated[float | None, typer.Option(help="Frozen → ready, seconds.")] = None,
    token_model: Annotated[str | None, typer.Option(
        help="LLM traces: base_s=0.05,prefill_tokens_per_s=5000,decode_tokens_per_s=50")] = None,
    duration_s: Annotated[float | None, typer.Option(
        help="Bill over [0, duration) (default: until every replay settles).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for randomised routing.")] = 0,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write load, instances and latency over time as a PNG "
                       "(needs matplotlib: the plot extra).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
    compiled: Annotated[bool, typer.Option(
        "--compiled", help="Run the compiled simulator (make sim-compiled; about twice as fast) "
                           "when it matches the source; pure Python otherwise, saying why.")] = False,
) -> None:
    """Replay a trace through torpor's own autoscaler, routing and billing: latency and cost."""
    if compiled:
        from torpor.sim import compiled as compiled_build

        if compiled_build.running()["build"] == "pure":
            if "--compiled" not in sys.argv:
                raise CliError("--compiled starts the command again: it works from a command line only")
            # the same command, through the launcher (its stderr line says which build runs)
            compiled_build.relaunch(["-m", "torpor", *(a for a in sys.argv[1:] if a != "--compiled")])
    from torpor.metering.prices import load_prices
    from torpor.sim import report, runner
    from torpor.sim.engine import Timings
    from torpor.sim.traces import TokenModel, load_trace

    tokens = TokenModel.parse(token_model) if token_model else TokenModel()
    requests = load_trace(trace, trace_format, tokens)
    raw, source = runner.load_raw_spec(spec)
    measured = runner.load_timings(timings, Timings()) if timings else Timings()
    flags = {k: v for k, v in (("cold_start_s", cold_start_s), ("thaw_s", thaw_s)) if v is not None}
    try:
        measured = Timings(**{**asdict(measured), **flags})
    except ValueError as exc:
        raise CliError(str(exc)) from None
    runs = runner.run_all(requests, raw, source, sets=sets or [], compare=compare or [],
                          timings=measured, prices=load_prices(prices), duration_s=duration_s,
                          seed=seed, timeline=plot is not None,
                          provision=runner.load_provision(provision) if provision else None)
    if plot is not None:
        report.plot(runs, plot)
    if as_json:
        sys.stdout.write(report.print_json(runs, requests, measured))
        return
    report.print_table(out, runs, requests, measured)
    if plot is not None:
        out.print(f"wrote {plot}")


keys_app = typer.Typer(
    help="API keys, tenants and their quotas (needs an admin key).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant the key acts for.")],
    admin: Annotated[bool, typer.Option(
        "--admin", help="An admin key: sees and changes every tenant's functions.")] = False,
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """Create a key and print it once (only its hash is kept): the key alone on stdout."""
    result = ApiClient(server).api("POST", "/api/v1/keys", json={"tenant": tenant, "admin": admin})
    if as_json:
        _print_json(result)
        return
    sys.stdout.write(result["key"] + "\n")
    kind = "admin key" if result["admin"] else "key"
    err.print(f"created {kind} {result['id']} for tenant {result['tenant']}; it is shown only this "
              "once (torpor keeps its hash)", highlight=False)


@keys_app.command("ls")
def keys_ls(server: Server = DEFAULT_SERVER, as_json: AsJson = False) -> None:
    """List keys (never the keys themselves) and each tenant's quota and use."""
    client = ApiClient(server)
    keys = client.api("GET", "/api/v1/keys")
    tenants = client.api("GET", "/api/v1/tenants")
    if as_json:
        _print_json({"keys": keys, "tenants": tenants})
        return
    table = Table("ID", "TENANT", "ADMIN", "CREATED", "REVOKED")
    for key in keys:
        table.add_row(key["id"], key["tenant"], "yes" if key["admin"] else "no",
                      _when(key["created_at"]), _when(key["revoked_at"]))
    out.print(table)
    quotas = Table("TENANT", "FUNCTIONS", "INSTANCES", "GPUS")
    for t in tenants:
        quotas.add_row(t["tenant"], f"{t['functions']}/{_limit(t['max_functions'])}",
                       f"{t['instances']}/{_limit(t['max_instances'])}",
                       f"{t['gpus']:g}/{_limit(t['max_gpus'])}")
    out.print(quotas)


def _limit(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (keys ls).")],
                server: Server = DEFAULT_SERVER) -> None:
    """Revoke a key: it is refused from now on."""
    result = ApiClient(server).api("DELETE", f"/api/v1/keys/{key_id}")
    out.print(f"revoked key {result['id']} of tenant {result['tenant']}")


def _quota_value(value: str | None, option: str, kind: type[int] | type[float]) -> Any:
    if value is None or value.lower() in ("none", "unlimited"):
        return None
    try:
        number = kind(value)
    except ValueError:
        raise CliError(f"{option}: {value!r} is not a number (or `none` for no limit)") from None
    if number < 0:
        raise CliError(f"{option}: {value!r} must be 0 or more")
    return number


@keys_app.command("quota")
def keys_quota(
    tenant: Annotated[str, typer.Argument(help="The tenant whose quota to show or set.")],
    max_functions: Annotated[str | None, typer.Option(
        "--max-functions", help="Functions it may have deployed (`none`: no limit).")] = None,
    max_instances: Annotated[str | None, typer.Option(
        "--max-instances", help="Instances live at once; more starts wait (`none`: no limit).")
    ] = None,
    max_gpus: Annotated[str | None, typer.Option(
        "--max-gpus", help="GPUs held at once, slices by their share (default 30; `none`: no "
                           "limit).")] = None,
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """Show or set a tenant's quota: max functions, instances and GPUs."""
    client = ApiClient(server)
    values: dict[str, Any] = {}
    for field, raw, kind in (("max_functions", max_functions, int),
                             ("max_instances", max_instances, int), ("max_gpus", max_gpus, float)):
        if raw is not None:
            values[field] = _quota_value(raw, "--" + field.replace("_", "-"), kind)
    if values:
        client.api("PUT", f"/api/v1/tenants/{tenant}/quota", json=values)
    row = next((t for t in client.api("GET", "/api/v1/tenants") if t["tenant"] == tenant), None)
    if row is None:
        raise CliError(f"tenant {tenant!r} has no key, function or quota yet")
    if as_json:
        _print_json(row)
        return
    out.print(f"{tenant}: functions {row['functions']}/{_limit(row['max_functions'])}  "
              f"instances {row['instances']}/{_limit(row['max_instances'])}  "
              f"gpus {row['gpus']:g}/{_limit(row['max_gpus'])}")


@app.command()
def delete(name: str, server: Server = DEFAULT_SERVER) -> None:
    """Delete a function and stop its instances."""
    ApiClient(server).api("DELETE", f"/api/v1/functions/{name}")
    out.print(f"deleted {name}")


def _api_key_first(argv: list[str]) -> list[str]:
    """``--api-key KEY`` may come anywhere on the line (``torpor ls --api-key KEY``): it is an
    option of ``torpor`` itself, so it moves before the command."""
    rest, moved = [], []
    i = 0
    while i < len(argv):
        if argv[i] == "--api-key" and i + 1 < len(argv):
            moved += argv[i:i + 2]
            i += 2
            continue
        if argv[i].startswith("--api-key="):
            moved.append(argv[i])
        else:
            rest.append(argv[i])
        i += 1
    return moved + rest


def main() -> None:
    sys.argv[1:] = _api_key_first(sys.argv[1:])
    try:
        app()
    except (CliError, TorporError) as exc:
        if _debug:
            raise
        message = str(exc)
        if isinstance(exc, SpecError):
            message = f"{exc.source}: " + "; ".join(exc.errors)
        err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
