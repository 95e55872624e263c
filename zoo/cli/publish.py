"""Publishing subcommands: ``zoo export RUN_DIR OUT_DIR`` (a hub-ready folder with a generated model card, built by
``zoo.publish.export``; ``--onnx`` adds a checked ``model.onnx``), ``zoo onnx SOURCE OUT`` (any zoo model as ONNX,
``zoo.publish.onnx_export``), ``zoo push FOLDER ORG/NAME`` (upload with ``huggingface_hub.HfApi``) and ``zoo reproduce
FOLDER`` (re-run a card's recipe and compare with the card; the logic is in ``zoo.publish.reproduce``).

Each command imports the library it runs when it runs, so ``zoo --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    from zoo.publish.export import export_run

    out = export_run(
        args.run_dir,
        args.out_dir,
        repo_id=args.repo_id,
        base_model=args.base_model,
        force=args.force,
        profile_batch=args.profile_batch,
        profile_iters=args.profile_iters,
        profile_file=args.profile_json,
        onnx=args.onnx,
    )
    acc = json.loads((out / "result.json").read_text())["final_acc"]
    print(f"exported {args.run_dir} -> {out} (top-1 {acc * 100:.2f}%; card: {out / 'README.md'})")
    print(f"load it: import zoo, timm; timm.create_model('local-dir:{out}', pretrained=True)")
    if not args.repo_id:
        print("the card's usage names hf-hub:ORG/NAME; re-export with --repo-id ORG/NAME before `zoo push`")
    return 0


def cmd_onnx(args: argparse.Namespace) -> int:
    from zoo.hub import load_model
    from zoo.publish.onnx_export import export_onnx

    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"error: {out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    if not out.parent.is_dir():
        print(f"error: {out.parent} is not a folder", file=sys.stderr)
        return 2
    # written beside the target, then renamed: a failed export leaves an existing file as it was
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        record = export_onnx(load_model(args.source), tmp, check=not args.no_check)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    diff = record["max_abs_diff"]
    checked = "not checked" if diff is None else f"ONNX Runtime matches eager to {diff:.2g}"
    print(f"wrote {out} (opset {record['opset']}, input {record['input']!r} of any batch size; {checked})")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from zoo.hub import PublishError, push_folder

    readme = Path(args.folder) / "README.md"
    if readme.is_file() and f'hf-hub:{args.repo_id}"' not in readme.read_text():
        raise PublishError(
            str(readme),
            "usage",
            f"the card was not exported for {args.repo_id}; re-run "
            f"`zoo export RUN_DIR {args.folder} --force --repo-id {args.repo_id}`",
        )
    try:
        url = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            message=args.message,
            revision=args.revision,
            create_pr=args.create_pr,
        )
    except ValueError:
        raise  # input errors (folder, card, repo id, offline, token): exit 2 with the file and field
    except Exception as e:  # the network boundary: HTTP errors, connection errors (httpx's are not OSErrors)
        print(
            f"error: upload of {args.folder} to hf-hub:{args.repo_id} failed: {type(e).__name__}: {e}", file=sys.stderr
        )
        return 1
    print(f"pushed {args.folder} -> {url}\nload it: timm.create_model('hf-hub:{args.repo_id}', pretrained=True)")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Exit 0 when the reproduction is within tolerance of the card, 1 when not (2 on bad input, from ``zoo``)."""
    from zoo.publish.reproduce import format_report, reproduce

    # with --json the one JSON object must be all of stdout, whatever training prints on the way
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        report = reproduce(
            args.folder,
            epochs=args.epochs,
            out=args.out,
            tolerance_pts=args.tolerance,
            sets=args.set,
            progress=not args.no_progress,
        )
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["passed"] else 1


def register(sub) -> None:
    s = sub.add_parser("export", help="write a hub-ready folder (weights, config, generated model card) for a run")
    s.add_argument("run_dir", help="a finished run folder (zoo train --out)")
    s.add_argument("out_dir", help="folder to write (must be empty or absent unless --force)")
    s.add_argument("--repo-id", default=None, metavar="ORG/NAME", help="hub repo the card's usage names")
    s.add_argument(
        "--base-model",
        default=None,
        metavar="ORG/NAME",
        help="hub id of the model this run fine-tuned (default: from recipe model.pretrained when it is an hf-hub: "
        "id or a published zoo model, by tag or bundled folder)",
    )
    s.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    s.add_argument("--profile-batch", type=int, default=None, help="profiling batch (default 32 up to 64 px, else 8)")
    s.add_argument("--profile-iters", type=int, default=5, help="timed profiling iterations (median)")
    s.add_argument(
        "--profile-json",
        default=None,
        metavar="FILE",
        help="use this `zoo profile --json` measurement instead of measuring now",
    )
    s.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (dynamic batch), checked against the weights in ONNX Runtime (extra: onnx)",
    )
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("onnx", help="write any zoo model (tag, local-dir:, hf-hub:) as ONNX, checked in ONNX Runtime")
    s.add_argument("source", help="what `zoo eval` takes: a published tag, local-dir:FOLDER or hf-hub:ORG/NAME")
    s.add_argument("out", help="the .onnx file to write")
    s.add_argument("--force", action="store_true", help="replace an existing file")
    s.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    s.set_defaults(fn=cmd_onnx)

    s = sub.add_parser("push", help="upload an exported folder to the Hugging Face hub (token from HF_TOKEN)")
    s.add_argument("folder")
    s.add_argument("repo_id", metavar="ORG/NAME")
    s.add_argument("--private", action="store_true", help="create the repo as private")
    s.add_argument("--message", default=None, help="commit message")
    s.add_argument("--revision", default=None, help="branch to commit to (created from main if missing)")
    s.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    s.set_defaults(fn=cmd_push)

    s = sub.add_parser("reproduce", help="re-run a model card's recipe (optionally its first K epochs) and compare")
    s.add_argument("folder", help="a model card folder (zoo export output), e.g. model_cards/NAME")
    s.add_argument(
        "--epochs",
        type=float,
        default=None,
        metavar="K",
        help="stop after K epochs of the unchanged schedule and compare with the card's logged evaluation there",
    )
    s.add_argument("--out", default=None, metavar="RUN_DIR", help="run folder (default runs/reproduce/NAME)")
    s.add_argument(
        "--tolerance",
        type=float,
        default=0.5,  # zoo.publish.reproduce.DEFAULT_TOLERANCE_PTS (not imported: `zoo --help` stays light)
        metavar="PTS",
        help="largest |accuracy delta| in percentage points that passes (default 0.5)",
    )
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_reproduce)
