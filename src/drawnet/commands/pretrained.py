"""``drawnet pretrained``: the trained models shipped with drawnet (list, show their cards, export one)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_list(args: argparse.Namespace) -> int:
    from .. import pretrained

    available = pretrained.names()
    if not available:
        print("this installation ships no trained models")
        return 0
    for name in available:
        info = pretrained.card(name)
        summary = info.get("summary") or f"{info.get('kind')} model"
        print(f"{name:<18} {summary}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from .. import pretrained

    if args.json:
        print(json.dumps(pretrained.card(args.name), indent=2))
    else:
        print(pretrained.describe(args.name))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .. import pretrained

    fields = json.loads(Path(args.card).read_text()) if args.card else {}
    if not isinstance(fields, dict):
        raise ValueError(f"{args.card} must hold a JSON object of model-card fields")
    out = pretrained.export(args.run, args.name, dest=args.dest, card_fields=fields)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrained", help="the trained models shipped with drawnet",
                              description="List the shipped models, show a model card, or export a run as one.")
    sub = p.add_subparsers(dest="pretrained_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    sub.add_parser("list", help="the shipped models").set_defaults(func=run_list)
    s = sub.add_parser("show", help="a shipped model's card")
    s.add_argument("name")
    s.add_argument("--json", action="store_true", help="the card as JSON")
    s.set_defaults(func=run_show)
    e = sub.add_parser("export", help="make a shipped model from a run (its best checkpoint, weights only)")
    e.add_argument("run", help="run directory or checkpoint file")
    e.add_argument("name", help="name of the shipped model")
    e.add_argument("--dest", type=Path, help="folder of models to write into (default: drawnet's own models folder)")
    e.add_argument("--card", help="a JSON file of model-card fields (data, recipe, machine, results, commands)")
    e.set_defaults(func=run_export)
