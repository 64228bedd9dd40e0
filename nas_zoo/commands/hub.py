"""`nas-zoo push DIR --repo-id ORG/NAME`: publish a checked model folder on the Hugging Face hub."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="publish a model folder (from `nas-zoo convert`) on the Hugging Face hub",
                       description="Check a model folder (it must load and run from its config.json alone), then "
                                   "create the hub repository if needed and upload the folder. The token comes "
                                   "from the usual places (HF_TOKEN, `hf auth login`), or --token.")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the hub, e.g. nas-zoo/dna_a.in1k")
    p.add_argument("--dry-run", action="store_true", help="check the folder and list what would be uploaded")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to upload to (default: main)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--token", default=None, help="hub token (default: HF_TOKEN or the stored login)")
    p.set_defaults(func=run)


def push_folder(folder, repo_id: str, dry_run: bool = False, private: bool = False,
                revision: Optional[str] = None, create_pr: bool = False, message: Optional[str] = None,
                token: Optional[str] = None, out=print):
    """Check `folder` (raises `FolderError`), then upload it. Returns the upload's commit info (None: dry run)."""
    from ..hub import check_model_folder

    facts = check_model_folder(folder)
    folder = Path(folder)
    card_id = facts.get("hf_hub_id")
    if card_id and card_id != repo_id:
        out(f"note: the folder was converted for '{card_id}' (model card, config.json); it is pushed to "
            f"'{repo_id}'. Convert with --repo-id {repo_id} to make them agree.")
    files = facts["files"]
    total = sum(files.values())
    verb = "would upload" if dry_run else "uploading"
    out(f"{verb} {len(files)} files ({total / 1e6:.2f} MB) from {folder} to https://huggingface.co/{repo_id}"
        + (f" (revision {revision})" if revision else "") + (" as a pull request" if create_pr else ""))
    for name, size in files.items():
        out(f"  {name:<24} {size:>12,d} B")
    if dry_run:
        return None
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    name = facts.get("entry") or repo_id.split("/")[-1]
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), revision=revision,
                             create_pr=create_pr, commit_message=message or f"Add {name} weights (nas-zoo)",
                             allow_patterns=sorted(files))


def run(args) -> int:
    from ..hub import FolderError

    try:
        info = push_folder(args.folder, args.repo_id, dry_run=args.dry_run, private=args.private,
                           revision=args.revision, create_pr=args.create_pr, message=args.message,
                           token=args.token)
    except FolderError as e:
        print(f"nas-zoo push: error: {e}\nnothing was uploaded", file=sys.stderr)
        return 2
    if info is not None:
        print(f"done: {getattr(info, 'commit_url', None) or info}")
    return 0
