"""`modelops rollout start|status|abort|promote` (through a model server's admin API) and `modelops controller`."""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
from typing import Any

from modelops.errors import InvalidInput

DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(text: str) -> float:
    """'90', '90s', '2m', '1h' -> seconds."""
    match = DURATION.match(text)
    if not match:
        raise InvalidInput(f"{text!r} is not a duration like 60s, 2m or 1h", field="interval")
    return float(match.group(1)) * UNIT_S[match.group(2) or "s"]


def add_rollout(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from modelops.cli import _add_home

    p = sub.add_parser("rollout", help="progressive delivery of a challenger version (admin API)")
    actions = p.add_subparsers(dest="rollout_action", required=True)

    def common(q: argparse.ArgumentParser, token: bool = True) -> None:
        _add_home(q)
        q.add_argument("--url", default=None, help="model server URL [the local stack's, else :8000]")
        q.add_argument("--output", choices=("text", "json"), default="text")
        if token:
            q.add_argument(
                "--token",
                default=None,
                help="admin token [$MODELOPS_ADMIN_TOKEN or $MODELOPS_HOME/admin-token]",
            )

    s = actions.add_parser("start", help="start rolling out a version as the challenger")
    common(s)
    s.add_argument("--version", required=True)
    s.add_argument("--steps", default=None, help="traffic percentages, e.g. 5,25,50,100 [server default]")
    s.add_argument("--interval", default=None, help="step length, e.g. 60s or 5m [server default]")
    s.add_argument("--mode", choices=("canary", "shadow"), default="canary")
    st = actions.add_parser("status", help="the rollout: challenger, step, share, decisions")
    common(st, token=False)
    a = actions.add_parser("abort", help="abort: the champion takes all traffic")
    common(a)
    a.add_argument("--why", default="", help="recorded with the decision")
    pr = actions.add_parser("promote", help="promote the challenger now")
    common(pr)
    pr.add_argument("--why", default="", help="recorded with the decision")
    p.set_defaults(func=_cmd_rollout)


def _cmd_rollout(args: argparse.Namespace) -> int:
    from modelops.cli import _server_url, _token
    from modelops.local import client

    url = _server_url(args)
    action = args.rollout_action
    body: dict[str, Any] = {}
    if action == "start":
        body = {"version": args.version, "mode": args.mode}
        if args.steps:
            try:
                body["steps"] = [int(p) for p in args.steps.split(",")]
            except ValueError:
                raise InvalidInput(
                    "--steps must be whole percentages, e.g. 5,25,50,100", field="steps"
                ) from None
        if args.interval:
            body["interval_s"] = duration_s(args.interval)
    elif action in ("abort", "promote") and args.why:
        body = {"why": args.why}
    result = client.rollout(url, _token(args) if action != "status" else None, action, body)
    print(json.dumps(result, indent=2) if args.output == "json" else render_status(result))
    return 0


def render_status(status: dict[str, Any]) -> str:
    """The rollout as a few lines for a terminal."""
    if status.get("state", "idle") == "idle":
        return "no rollout"
    steps = status.get("steps") or []
    lines = [
        f"rollout {status.get('id')}: v{status.get('version')} over v{status.get('champion_version')} "
        f"({status.get('mode')}) {status.get('state')}",
    ]
    if status.get("state") == "running":
        lines.append(
            f"  step {int(status.get('step', 0)) + 1}/{len(steps)}: {status.get('percent')}% "
            f"(steps {','.join(str(s) for s in steps)}, every {status.get('interval_s'):g} s)"
        )
    if status.get("shadow"):
        lines.append(f"  shadow: {json.dumps(status['shadow'])}")
    if status.get("analysis"):
        lines.append(f"  latest analysis: {json.dumps(status['analysis'])}")
    for d in status.get("decisions") or []:
        lines.append(f"  - step {d['step'] + 1} ({d['percent']}%) {d['verdict']}: {d['reason']}")
    return "\n".join(lines)


def add_controller(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "controller", help="run the rollout controller (reads replicas' metrics, decides steps)"
    )
    p.add_argument(
        "--targets", default=None, help="comma-separated model-server URLs [$MODELOPS_CONTROLLER_TARGETS]"
    )
    p.add_argument("--prometheus-url", default=None, help="read the metrics from Prometheus instead")
    p.add_argument("--tick", default=None, help="how often to look, e.g. 5s [$MODELOPS_CONTROLLER_TICK_S]")
    p.add_argument("--health-port", type=int, default=None, help="port of /healthz [8090; 0: off]")
    p.set_defaults(func=_cmd_controller)


def _cmd_controller(args: argparse.Namespace) -> int:
    from modelops.registry import Registry
    from modelops.rollout.controller import Controller, serve_health
    from modelops.rollout.manage import Rollouts
    from modelops.settings import ControllerSettings

    overrides: dict[str, Any] = {}
    if args.targets:
        overrides["controller_targets"] = args.targets
    if args.prometheus_url:
        overrides["controller_prometheus_url"] = args.prometheus_url
    if args.tick:
        overrides["controller_tick_s"] = duration_s(args.tick)
    if args.health_port is not None:
        overrides["controller_health_port"] = args.health_port
    settings = ControllerSettings(**overrides)
    registry = Registry(
        settings,
        write_username=settings.registry_write_username,
        write_password=settings.registry_write_password,
    )
    controller = Controller.from_settings(settings, Rollouts(registry, settings.challenger_alias))
    if settings.controller_health_port:
        serve_health(
            controller,
            settings.controller_health_host,
            settings.controller_health_port,
            settings.controller_tick_s,
        )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller.run(settings.controller_tick_s, stop)
    return 0
