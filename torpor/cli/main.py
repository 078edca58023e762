"""``torpor``: serve, deploy, list, inspect, invoke and delete functions."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from torpor import __version__
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
) -> None:
    global _debug
    _debug = debug


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
    config: Annotated[
        Path | None,
        typer.Option(envvar="TORPOR_CONFIG",
                     help="Server config YAML (price table under `prices:`); "
                          "default DATA_DIR/config.yaml if present."),
    ] = None,
) -> None:
    """Run the gateway, control API, reconciler and store in one process."""
    from torpor.server import serve as run_server

    run_server(host, port, data_dir, deploy or [], log_level, config)


@app.command()
def deploy(
    path: Annotated[Path, typer.Argument(help="A folder with torpor.yaml, or a spec file.")],
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """Validate a spec and deploy it (a new revision if the name exists)."""
    from torpor.spec import load_spec_file

    _, raw, base_dir = load_spec_file(path)
    source = str((path / "torpor.yaml") if path.is_dir() else path)
    fn = ApiClient(server).api(
        "POST", "/api/v1/functions", json={"spec": raw, "base_dir": str(base_dir), "source": source}
    )
    if as_json:
        _print_json(fn)
        return
    out.print(f"deployed [bold]{fn['name']}[/] revision {fn['revision']} → "
              f"{server.rstrip('/')}{fn['url']}")


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
    if "scaling_policy" in fn:
        out.print(f"  scaling {fn['scaling_policy']} ({fn['scaling_policy_why']}): "
                  f"desired {fn['desired']} — {fn['scaling_reason']}")
    if fn["last_error"]:
        err.print(f"[red]last error:[/] {fn['last_error']}")
    _instance_table(fn["instance_list"])
    if fn["events"]:
        out.print("events:")
        for event in reversed(fn["events"][:15]):
            out.print(f"  {_when(event['at'])}  {event['kind']:<13} {event['message']}")


def _ms(value: Any) -> str:
    return f"{value * 1000:.1f}" if isinstance(value, int | float) else "-"


def _instance_table(instances: list[dict[str, Any]]) -> None:
    """Instances with their cold start in ms: fork or spawn (start → listening, setup included),
    setup, initialize (/initialize: warmup), first response, total (start → ready)."""
    table = Table("ID", "FUNCTION", "REV", "STATE", "PID", "IN FLIGHT", "STARTED", "MODE",
                  "FORK/SPAWN", "SETUP", "INIT", "1ST RESP", "COLD START")
    for i in instances:
        cold = i.get("cold_start") or {}
        table.add_row(i["id"], i["function"], str(i["revision"]), i["state"], str(i["pid"] or "-"),
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

        try:
            data = yaml.safe_load(policies.read_text(encoding="utf-8"))
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
    server: Server = DEFAULT_SERVER,
    as_json: AsJson = False,
) -> None:
    """What each function's instances cost, against an always-on GPU."""
    params = {k: _when_arg(v) for k, v in (("since", since), ("until", until)) if v}
    if function:
        params["function"] = function
    result = ApiClient(server).api("GET", "/api/v1/billing", params=params)
    if as_json:
        _print_json(result)
        return
    currency = result["currency"]
    table = Table("FUNCTION", "ACTIVE S", "IDLE S", f"COST {currency}",
                  f"ALWAYS-ON {currency}", "SAVING")
    for line in result["functions"]:
        pct = f"{line['saving_pct']}%" if line["saving_pct"] is not None else "-"
        table.add_row(line["function"], line["active_seconds"], line["idle_seconds"],
                      line["cost"], line["always_on_cost"], pct)
    total_pct = f"{result['saving_pct']}%" if result["saving_pct"] is not None else "-"
    table.add_row("total", "", "", result["cost"], result["always_on_cost"], total_pct)
    out.print(table)


def _when_arg(value: str) -> str:
    """A duration like 30m, 6h or 7d means that long before now; anything else goes as given."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(value) > 1 and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        import time

        return str(time.time() - float(value[:-1]) * units[value[-1]])
    return value


@app.command()
def delete(name: str, server: Server = DEFAULT_SERVER) -> None:
    """Delete a function and stop its instances."""
    ApiClient(server).api("DELETE", f"/api/v1/functions/{name}")
    out.print(f"deleted {name}")


def main() -> None:
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
