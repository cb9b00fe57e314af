"""The `modelops` command. Each sub-command parses its flags, builds settings and calls one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from modelops import __version__
from modelops.errors import EXIT_UNHEALTHY, InvalidInput, ModelOpsError, exit_code
from modelops.local.stack import StackConfig
from modelops.logs import configure_logging
from modelops.ops.loadtest import add_loadtest
from modelops.rollout.commands import add_controller, add_rollout
from modelops.settings import ServerSettings, StackSettings, TrainerSettings, apply_mlflow_client_defaults
from modelops.training.options import ALGORITHMS, DEFAULT_MAX_BYTES, PROMOTE_MODES, TrainOptions

# Flag defaults come from the option classes themselves, never repeated here.
TRAIN_DEFAULTS = TrainOptions(tracking_uri="", model_name="", experiment="", alias="")
STACK_DEFAULTS = StackConfig(home=Path())
PROGRESS_COMMANDS = frozenset({"db", "create-bucket", "auth", "smoke-test", "controller"})


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# -- train ------------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    defaults = TrainerSettings()
    p = sub.add_parser("train", help="train, log, register and (maybe) promote a model")
    p.add_argument("--tracking-uri", default=defaults.tracking_uri, help="MLflow tracking URI")
    p.add_argument("--model-name", default=defaults.model_name, help="registered model name")
    p.add_argument("--experiment", default=defaults.experiment, help="MLflow experiment")
    p.add_argument(
        "--algorithm", default=TRAIN_DEFAULTS.algorithm, choices=ALGORITHMS, help="estimator to fit"
    )
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter")
    p.add_argument(
        "--data",
        default=None,
        help=(
            "CSV path, s3://bucket/key, http(s):// URL, or a prediction log "
            "(mlflow-artifacts:/predictions/model=<name>, or a folder) [built-in set]"
        ),
    )
    p.add_argument("--target", default=TRAIN_DEFAULTS.target, help="label column of a CSV")
    p.add_argument(
        "--positive-class",
        default=None,
        help="label the binary metrics are about [the second of the two sorted labels: 1 of 0/1, yes of no/yes]",
    )
    p.add_argument("--test-size", type=float, default=TRAIN_DEFAULTS.test_size, help="held-out fraction")
    p.add_argument("--seed", type=int, default=TRAIN_DEFAULTS.seed)
    p.add_argument(
        "--promote",
        default=TRAIN_DEFAULTS.promote,
        choices=PROMOTE_MODES,
        help="when to move the alias (rollout: a winner becomes the challenger of a canary rollout instead)",
    )
    p.add_argument(
        "--trigger",
        default=None,
        help="what started this training, tagged modelops.trigger on the run and the version (e.g. drift)",
    )
    p.add_argument("--metric", default=TRAIN_DEFAULTS.metric, help="metric compared under --promote auto")
    p.add_argument("--alias", default=defaults.model_alias, help="alias to move")
    p.add_argument(
        "--eval-data", default=None, help="fixed evaluation CSV both models are scored on [held-out split]"
    )
    p.add_argument(
        "--min-delta",
        type=float,
        default=TRAIN_DEFAULTS.min_delta,
        help="how much worse than the champion is still ok",
    )
    p.add_argument(
        "--threshold", action="append", default=[], metavar="METRIC>=VALUE", help="absolute bar (repeatable)"
    )
    p.add_argument(
        "--require-approval",
        action="store_true",
        default=defaults.require_approval,
        help="promotion only marks the version; `modelops approve` moves the alias [$MODELOPS_REQUIRE_APPROVAL]",
    )
    p.add_argument("--wait-s", type=float, default=defaults.wait_s, help="how long to wait for MLflow")
    p.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest --data download or file [1 GiB]"
    )
    _add_home(p)
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_train, settings=defaults)


def _trainer_identity(settings: TrainerSettings, home: Path) -> tuple[Path | None]:
    """Credentials and signing key of the trainer: the environment's, else the local platform's files."""
    from modelops.auth import TRAINER
    from modelops.settings import apply_mlflow_credentials

    if settings.tracking_username is None and (home / "credentials" / TRAINER).is_file():
        apply_mlflow_credentials(TRAINER, (home / "credentials" / TRAINER).read_text().strip())
    else:
        apply_mlflow_credentials(settings.tracking_username, settings.tracking_password)
    key = settings.signing_key_path
    if key is None and (home / "keys" / "signing-key.pem").is_file():
        key = home / "keys" / "signing-key.pem"
    return (key,)


def _cmd_train(args: argparse.Namespace) -> int:
    from modelops.training.publish import run_training

    settings: TrainerSettings = args.settings
    (signing_key,) = _trainer_identity(settings, _home(args))
    options = TrainOptions(
        tracking_uri=args.tracking_uri,
        model_name=args.model_name,
        experiment=args.experiment,
        alias=args.alias,
        algorithm=args.algorithm,
        params=args.param,
        data=args.data,
        target=args.target,
        test_size=args.test_size,
        seed=args.seed,
        promote=args.promote,
        metric=args.metric,
        wait_s=args.wait_s,
        s3_endpoint_url=settings.s3_endpoint_url,
        git_commit=settings.git_commit,
        signing_key_path=signing_key,
        max_bytes=args.max_bytes,
        positive_class=args.positive_class,
        eval_data=args.eval_data,
        min_delta=args.min_delta,
        thresholds=args.threshold,
        require_approval=args.require_approval,
        image=settings.image,
        trigger=args.trigger,
        challenger_alias=settings.challenger_alias,
        rollout_steps=settings.rollout_steps,
        rollout_interval_s=settings.rollout_interval_s,
    )
    outcome = run_training(options)
    if args.output == "json":
        print(json.dumps(outcome.to_dict()))
        return 0
    verdict = (
        "promoted"
        if outcome.promoted
        else ("awaiting approval" if outcome.awaiting_approval else "not promoted")
    )
    print(
        f"run {outcome.run_id}: registered {outcome.model_name} v{outcome.version}, {verdict} ({outcome.reason})"
    )
    print(f"alias {outcome.alias!r} -> v{outcome.champion_version}")
    if outcome.rollout:
        print(f"rollout {outcome.rollout}: v{outcome.version} is the challenger (`modelops rollout status`)")
    elif outcome.rollout_reason:
        print(f"no rollout: {outcome.rollout_reason}")
    print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(outcome.metrics.items())))
    total = sum(outcome.timings_s.values())
    print(
        "timing: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in outcome.timings_s.items())
        + f" (total {total:.2f}s)"
    )
    return 0


# -- serve ------------------------------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the model server (follows the registry alias)")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    p.add_argument("--port", type=int, default=STACK_DEFAULTS.server_port)
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from modelops.serving.server import run_server

    run_server(ServerSettings(), args.host, args.port, args.workers)
    return 0


# -- local platform -------------------------------------------------------------------------------
def _home(args: argparse.Namespace) -> Path:
    return Path(args.home) if args.home else StackSettings().home


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="state folder [$MODELOPS_HOME or ./.modelops]")


def _add_up(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start the local platform (MLflow + model server) and train a first model")
    _add_home(p)
    p.add_argument("--mlflow-port", type=int, default=STACK_DEFAULTS.mlflow_port)
    p.add_argument("--server-port", type=int, default=STACK_DEFAULTS.server_port)
    p.add_argument(
        "--controller-port",
        type=int,
        default=STACK_DEFAULTS.controller_port,
        help="rollout controller's /healthz",
    )
    p.add_argument(
        "--backend-store-uri", default=None, help="e.g. postgresql://user:pw@host/db [SQLite in home]"
    )
    p.add_argument(
        "--artifacts-destination",
        default=None,
        help="e.g. s3://bucket/path (endpoint from MLFLOW_S3_ENDPOINT_URL) [folder in home]",
    )
    p.add_argument(
        "--detach", action="store_true", help="return once healthy; stop later with `modelops down`"
    )
    p.set_defaults(func=_cmd_up)
    d = sub.add_parser("down", help="stop a detached local platform")
    _add_home(d)
    d.set_defaults(func=lambda a: stack_down(_home(a)))
    st = sub.add_parser("status", help="state of the local platform's components")
    _add_home(st)
    st.add_argument("--output", choices=("text", "json"), default="text")
    st.set_defaults(func=_cmd_status)


def _cmd_up(args: argparse.Namespace) -> int:
    from modelops.local.stack import StackConfig, up

    settings = StackSettings()
    config = StackConfig(
        home=_home(args),
        mlflow_port=args.mlflow_port,
        server_port=args.server_port,
        controller_port=args.controller_port,
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        startup_timeout_s=settings.startup_timeout_s,
        s3_endpoint_url=settings.s3_endpoint_url,
    )
    return up(config, detach=args.detach)


def stack_down(home: Path) -> int:
    from modelops.local.stack import down

    return down(home)


def _cmd_status(args: argparse.Namespace) -> int:
    from modelops.local.stack import status

    report = status(_home(args))
    if args.output == "json":
        print(json.dumps(report))
    elif not report["components"]:
        print(f"No stack is running from {report['home']}.")
    else:
        for name, info in report["components"].items():
            print(f"  {name:<14} {info['process']:<8} {info['health']:<12} {info['url']}")
        print(f"  served model   {report.get('model_name')} v{report['model_version']}")
    return 0 if report["running"] else EXIT_UNHEALTHY


def _server_url(args: argparse.Namespace) -> str:
    from modelops.local.stack import read_state

    if args.url:
        return str(args.url).rstrip("/")
    state = read_state(_home(args))
    return state.urls["model-server"] if state else "http://127.0.0.1:8000"


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    configured = ServerSettings().admin_token
    if configured is not None:
        return configured.get_secret_value()
    path = _home(args) / "admin-token"
    if path.is_file():
        return path.read_text().strip()
    raise InvalidInput(
        f"no admin token: pass --token, set MODELOPS_ADMIN_TOKEN, or create {path}", field="token"
    )


def _add_client(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def common(p: argparse.ArgumentParser) -> None:
        _add_home(p)
        p.add_argument("--url", default=None, help="model server URL [the local stack's, else :8000]")

    p = sub.add_parser("predict", help="send a prediction request (the model's input example by default)")
    common(p)
    p.add_argument("--features", default=None, help="one row: '1.0,2.0,...' or JSON list/object")
    p.add_argument("--file", type=Path, default=None, help="JSON request body, or CSV with a header row")
    p.add_argument("--print-body", action="store_true", help="print the request body instead of sending it")
    p.set_defaults(func=_cmd_predict)
    d = sub.add_parser("deploy", help="move the alias to a version or run (admin API)")
    common(d)
    group = d.add_mutually_exclusive_group(required=True)
    group.add_argument("--version", default=None)
    group.add_argument("--run-id", default=None)
    d.add_argument(
        "--token", default=None, help="admin token [$MODELOPS_ADMIN_TOKEN or $MODELOPS_HOME/admin-token]"
    )
    d.set_defaults(func=_cmd_deploy)
    r = sub.add_parser("rollback", help="move the alias back to its previous version (admin API)")
    common(r)
    r.add_argument(
        "--token", default=None, help="admin token [$MODELOPS_ADMIN_TOKEN or $MODELOPS_HOME/admin-token]"
    )
    r.set_defaults(func=_cmd_rollback)


def _cmd_predict(args: argparse.Namespace) -> int:
    from modelops.local import client

    url = _server_url(args)
    body = client.prediction_body(url, args.features, args.file)
    print(
        json.dumps(
            body if args.print_body else client.predict(url, body), indent=None if args.print_body else 2
        )
    )
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from modelops.local import client

    print(json.dumps(client.deploy(_server_url(args), _token(args), args.version, args.run_id), indent=2))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from modelops.local import client

    print(json.dumps(client.rollback(_server_url(args), _token(args)), indent=2))
    return 0


# -- operational tasks (run by the chart) ----------------------------------------------------------
def _add_ops(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    b = sub.add_parser("create-bucket", help="create the artifact bucket if it does not exist (idempotent)")
    b.add_argument("--bucket", required=True)
    b.add_argument("--endpoint-url", default=None, help="S3 endpoint [$MLFLOW_S3_ENDPOINT_URL, else AWS]")
    b.add_argument("--region", default=None)
    b.add_argument("--wait-s", type=float, default=300, help="how long to wait for the object store")
    b.set_defaults(func=_cmd_create_bucket)
    d = sub.add_parser("db", help="MLflow backend database schema")
    d.add_argument(
        "action", choices=("upgrade", "wait"), help="upgrade: create/migrate once; wait: until current"
    )
    d.add_argument(
        "--backend-store-uri", required=True, help="e.g. postgresql+psycopg://user@host:5432/mlflow"
    )
    d.add_argument("--wait-s", type=float, default=300)
    d.set_defaults(func=_cmd_db)
    t = sub.add_parser("smoke-test", help="check a running platform end to end (what `helm test` runs)")
    t.add_argument("--mlflow-url", required=True)
    t.add_argument("--server-url", required=True)
    t.set_defaults(func=_cmd_smoke)


def _add_governance(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    defaults = TrainerSettings()

    def common(p: argparse.ArgumentParser) -> None:
        _add_home(p)
        p.add_argument("--tracking-uri", default=defaults.tracking_uri, help="MLflow tracking URI")
        p.add_argument("--model-name", default=defaults.model_name, help="registered model name")
        p.add_argument("--alias", default=defaults.model_alias, help="alias")

    a = sub.add_parser("approve", help="move the alias to a version awaiting approval (operator credential)")
    common(a)
    a.add_argument("version", help="the version to approve")
    a.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    a.set_defaults(func=_cmd_approve)
    h = sub.add_parser("history", help="every recorded alias move: who, when, why, from, to")
    common(h)
    h.add_argument("--output", choices=("text", "json"), default="text")
    h.set_defaults(func=_cmd_history)


def _operator_registry(args: argparse.Namespace) -> Any:
    """The registry as the operator: the environment's principal, else the local platform's operator."""
    from modelops.auth import OPERATOR
    from modelops.registry import Registry
    from modelops.settings import RegistrySettings

    settings = RegistrySettings(
        tracking_uri=args.tracking_uri, model_name=args.model_name, model_alias=args.alias
    )
    stored = _home(args) / "credentials" / OPERATOR
    if settings.tracking_username is None and stored.is_file():
        from pydantic import SecretStr

        settings = settings.model_copy(
            update={"tracking_username": OPERATOR, "tracking_password": SecretStr(stored.read_text().strip())}
        )
    return Registry(settings)


def _cmd_approve(args: argparse.Namespace) -> int:
    registry = _operator_registry(args)
    version = registry.get_version(args.version)
    if version.tags.get("modelops.awaiting_approval") != "true":
        raise InvalidInput(f"v{version.version} is not awaiting approval", field="version")
    previous = registry.move_alias(version.version, action="approval", why=args.reason)
    registry.set_version_tags(
        version.version, {"modelops.awaiting_approval": "false", "modelops.approval_reason": args.reason}
    )
    print(f"alias {registry.alias!r}: v{previous} -> v{version.version} (approved: {args.reason})")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    moves = [m.to_dict() for m in _operator_registry(args).audit()]
    if args.output == "json":
        print(json.dumps(moves))
        return 0
    for m in moves:
        print(
            f"{m['when']}  {m['alias']:<10} {m['action']:<9} v{m['from'] or '-'} -> v{m['to']}  by {m['who']}: {m['why']}"
        )
    return 0


def _add_security(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    a = sub.add_parser(
        "auth", help="MLflow principals (what the chart's MLflow pod runs before MLflow starts)"
    )
    a.add_argument(
        "action", choices=("bootstrap",), help="bootstrap: users, passwords and grants (idempotent)"
    )
    a.add_argument(
        "--database-uri", required=True, help="MLflow auth database, e.g. postgresql+psycopg://..."
    )
    a.add_argument(
        "--backend-store-uri", default=None, help="MLflow tracking database [the same as --database-uri]"
    )
    a.add_argument("--model-name", default=TrainerSettings().model_name, help="registered model to grant on")
    a.add_argument(
        "--experiment",
        default=TrainerSettings().experiment,
        help="the trainer's experiment (created, with the prediction log's, owned by no principal)",
    )
    a.set_defaults(func=_cmd_auth)
    k = sub.add_parser("keys", help="model-signing keys")
    k.add_argument("action", choices=("generate",), help="a new elliptic-curve (P-256) key pair")
    k.add_argument(
        "--private", type=Path, required=True, help="private key PEM to write (mode 0600; the trainer's)"
    )
    k.add_argument("--public", type=Path, required=True, help="public key PEM to write (the model servers')")
    k.set_defaults(func=_cmd_keys)


def _cmd_auth(args: argparse.Namespace) -> int:
    from modelops.auth import MODEL_SERVER, OPERATOR, TRAINER, bootstrap
    from modelops.settings import AuthBootstrapSettings

    settings = AuthBootstrapSettings()
    secrets = {
        TRAINER: settings.auth_trainer_password,
        MODEL_SERVER: settings.auth_model_server_password,
        OPERATOR: settings.auth_operator_password,
    }
    done = bootstrap(
        args.database_uri,
        args.model_name,
        settings.admin_password.get_secret_value() if settings.admin_password else "",
        {name: value.get_secret_value() if value else "" for name, value in secrets.items()},
        backend_store_uri=args.backend_store_uri or args.database_uri,
        experiment=args.experiment,
    )
    print("\n".join(done))
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from modelops.signing import generate_keypair

    if args.private.exists():
        raise InvalidInput(f"{args.private} exists; refusing to overwrite a signing key", field="private")
    generate_keypair(args.private, args.public)
    print(f"private key {args.private} (give it to the trainer only), public key {args.public}")
    return 0


def _cmd_create_bucket(args: argparse.Namespace) -> int:
    from modelops.ops.bucket import ensure_bucket

    endpoint = args.endpoint_url or TrainerSettings().s3_endpoint_url
    result = ensure_bucket(args.bucket, endpoint, args.region, args.wait_s)
    print(f"bucket {args.bucket}: {result}")
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    from modelops.ops import database

    if args.action == "upgrade":
        print(f"schema: {database.upgrade(args.backend_store_uri, args.wait_s)}")
    else:
        print(f"schema current at {database.wait_for_schema(args.backend_store_uri, args.wait_s)}")
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    from modelops.ops import smoke
    from modelops.settings import RegistrySettings

    settings = RegistrySettings()
    auth = (
        (settings.tracking_username, settings.tracking_password.get_secret_value())
        if settings.tracking_username and settings.tracking_password
        else None
    )
    smoke.run(args.mlflow_url.rstrip("/"), args.server_url.rstrip("/"), auth=auth)
    print("smoke test passed")
    return 0


# -- main -------------------------------------------------------------------------------------------
Registrar = Callable[["argparse._SubParsersAction[Any]"], None]


class _Parser(argparse.ArgumentParser):
    """Bad flags are bad input: exit code 1 with one line, like every other input error (argparse's own
    exit code 2 means "unreachable" here)."""

    def error(self, message: str) -> NoReturn:
        raise InvalidInput(f"{self.prog}: {message}", field="argv")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modelops", description="ModelOps Stack command line")
    parser.add_argument("--version", action="version", version=f"modelops {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    registrars: list[Registrar] = [
        _add_train,
        _add_serve,
        _add_up,
        _add_client,
        _add_ops,
        _add_security,
        _add_governance,
        add_rollout,
        add_controller,
        add_loadtest,
    ]
    for add in registrars:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    apply_mlflow_client_defaults()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except InvalidInput as exc:
        return _fail(f"{exc.message} (see --help)", exit_code(exc))
    if args.verbose:
        configure_logging(logging.DEBUG)
    elif args.command == "serve":
        configure_logging(ServerSettings().log_level)
    else:
        # Long-running and provisioning commands say what they wait for; one-shot commands stay quiet.
        configure_logging(logging.INFO if args.command in PROGRESS_COMMANDS else logging.WARNING)
    try:
        code: int = args.func(args)
        return code
    except ModelOpsError as exc:
        return _fail(exc.message, exit_code(exc))
    except KeyboardInterrupt:
        return 130
