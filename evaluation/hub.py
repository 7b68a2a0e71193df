"""Sharing an exported model folder on the Hugging Face Hub (``export.py RUN --format hf --push_to_hub=user/name``).

``check_push`` runs before anything is exported: offline mode (``HF_HUB_OFFLINE``), no token (``hf auth login``,
formerly ``huggingface-cli login``, or ``HF_TOKEN``) or an unreachable Hub (a 3 s probe) fail at once with what to
do, and nothing is written. ``push_folder`` then creates the repository (``create_repo``, ``exist_ok``) and
uploads the folder in one commit (``upload_folder``); when the upload fails, a repository it created is deleted
again, so the Hub holds the whole model or nothing new.
"""
from __future__ import annotations

import re

from huggingface_hub import HfApi, constants, get_token

from evaluation.export import ExportError
from models.weights import reachable

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class HubError(ExportError):
    """The model cannot be pushed to the Hub; the message says why and what to do."""


def check_push(repo_id: str) -> str:
    """The token to push with, after checking that ``repo_id`` (``user/name`` or ``org/name``) can be pushed to:
    not offline, a token, the Hub reachable. Raises HubError naming the cause and the fix; nothing is written."""
    if not _REPO_ID.fullmatch(repo_id):
        raise HubError(f"--push_to_hub={repo_id}: a repository id looks like user/name or org/name")
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"--push_to_hub={repo_id}: offline mode is on (HF_HUB_OFFLINE=1), so nothing can be uploaded. "
                       f"Unset HF_HUB_OFFLINE on a connected machine, or export without --push_to_hub. Nothing was "
                       "exported.")
    token = get_token()
    if not token:
        raise HubError(f"--push_to_hub={repo_id}: no Hugging Face token. Log in with `hf auth login` (formerly "
                       "`huggingface-cli login`) or set HF_TOKEN to a token with write access "
                       "(https://huggingface.co/settings/tokens). Nothing was exported.")
    if not reachable(constants.ENDPOINT):
        raise HubError(f"--push_to_hub={repo_id}: {constants.ENDPOINT} is not reachable (no connection within 3 s). "
                       "Nothing was exported; run again when online, or export without --push_to_hub and upload the "
                       f"folder later with `hf upload {repo_id} <folder>`.")
    return token


def push_folder(folder, repo_id: str, token: str, private: bool = False, message: str = "") -> str:
    """Upload ``folder`` to the model repository ``repo_id`` (created, ``private`` if asked, when missing) in one
    commit; returns the commit URL. An existing repository keeps its visibility. Raises HubError (upload or
    permission failure); a repository created here is deleted again on failure."""
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    created = False
    try:
        created = not api.repo_exists(repo_id, repo_type="model")
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=message or "Upload model exported by mel-classifier")
    except Exception as err:
        if created:
            try:
                api.delete_repo(repo_id, repo_type="model", missing_ok=True)
            except Exception:  # the upload error below is the one to report
                pass
        raise HubError(f"could not push {folder} to {constants.ENDPOINT}/{repo_id} ({type(err).__name__}: "
                       f"{' '.join(str(err).split())[:300]}). Check the token's write access and the repository "
                       "name; the local export is complete.") from None
    return info.commit_url
