"""``torpor deploy``'s upload: pack a folder, skip it if the server has it, else send it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from torpor.cli.client import ApiClient, CliError
from torpor.code import CodeError, pack_dir

PROGRESS_FROM_BYTES = 8 * 1024 * 1024  # show a bar only for folders at least this big
UPLOAD_TIMEOUT_S = 600.0


def upload_folder(client: ApiClient, folder: Path, out: Console) -> str:
    """The uploaded archive's digest (what ``POST /api/v1/functions`` names as ``code``)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  console=out, transient=True, disable=not out.is_terminal) as bar:
        task = bar.add_task(f"packing {folder.name}", total=None, visible=False)

        def progress(done: int, total: int) -> None:
            if total >= PROGRESS_FROM_BYTES:
                bar.update(task, completed=done, total=total, visible=True)

        try:
            archive = pack_dir(folder, progress=progress)
        except CodeError as exc:
            raise CliError(str(exc)) from None
    path = f"/api/v1/code/{archive.digest}"
    if client.request("HEAD", path).status_code == 200:
        return archive.digest
    if len(archive.data) >= PROGRESS_FROM_BYTES and out.is_terminal:
        out.print(f"uploading {folder} ({len(archive.data) / 2**20:.1f} MiB, {archive.files} files)")
    client.api("PUT", path, content=archive.data,
               headers={"content-type": "application/gzip"}, timeout=UPLOAD_TIMEOUT_S)
    return archive.digest
