"""The `modelops` command. Each sub-command parses its flags, builds settings and calls one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from modelops import __version__
from modelops.errors import InvalidInput, ModelOpsError, RegistryUnavailable
from modelops.settings import TrainerSettings, apply_mlflow_client_defaults

EXIT_INPUT = 1
EXIT_UNREACHABLE = 2


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
    p.add_argument("--algorithm", default="logreg", help="logreg | random_forest | gradient_boosting")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter")
    p.add_argument("--data", default=None, help="CSV path, s3://bucket/key or http(s):// URL [built-in set]")
    p.add_argument("--target", default="target", help="label column of a CSV")
    p.add_argument("--test-size", type=float, default=0.2, help="held-out fraction")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--promote", default="auto", help="auto | always | never")
    p.add_argument("--metric", default="roc_auc", help="metric compared under --promote auto")
    p.add_argument("--alias", default=defaults.model_alias, help="alias to move")
    p.add_argument("--wait-s", type=float, default=defaults.wait_s, help="how long to wait for MLflow")
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_train, settings=defaults)


def _cmd_train(args: argparse.Namespace) -> int:
    from modelops.training.publish import TrainOptions, run_training

    settings: TrainerSettings = args.settings
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
    )
    outcome = run_training(options)
    if args.output == "json":
        print(json.dumps(outcome.to_dict()))
        return 0
    verdict = "promoted" if outcome.promoted else "not promoted"
    print(
        f"run {outcome.run_id}: registered {outcome.model_name} v{outcome.version}, {verdict} ({outcome.reason})"
    )
    print(f"alias {outcome.alias!r} -> v{outcome.champion_version}")
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
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from modelops.serving.server import run_server
    from modelops.settings import ServerSettings

    run_server(ServerSettings(), args.host, args.port, args.workers)
    return 0


# -- main -------------------------------------------------------------------------------------------
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelops", description="ModelOps Stack command line")
    parser.add_argument("--version", action="version", version=f"modelops {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    registrars: list[Registrar] = [_add_train, _add_serve]
    for add in registrars:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    apply_mlflow_client_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
        return code
    except RegistryUnavailable as exc:
        return _fail(exc.message, EXIT_UNREACHABLE)
    except InvalidInput as exc:
        return _fail(exc.message, EXIT_INPUT)
    except ModelOpsError as exc:
        return _fail(exc.message, EXIT_INPUT)
    except KeyboardInterrupt:
        return 130
