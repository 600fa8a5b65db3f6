"""Whether an output folder (`textrlhf sft|rm|export`'s output_dir) may be written: an existing,
non-empty folder only with --overwrite, and then only when it holds a saved model (the writer,
`agents.run.files.replace_folder`, replaces the whole folder)."""

from __future__ import annotations

from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def is_model_folder(folder: Path) -> bool:
    """A folder `save_pretrained` wrote (a model, an adapter, an export): a real folder (not a
    link) of plain files only, with at least one weights file (*.safetensors, *.bin)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    plain = all(p.is_file() and not p.is_symlink() for p in entries)
    return plain and any(p.suffix in WEIGHT_SUFFIXES for p in entries)


def check_output_dir(folder: str | Path, overwrite: bool) -> Path:
    """Refuse an existing, non-empty output folder unless `overwrite`; with `overwrite`, refuse
    one that is not a model folder (`is_model_folder`): the writer replaces the whole folder
    (`agents.run.files.replace_folder`), and --overwrite replaces a model, never other files."""
    folder = Path(folder)
    if folder.is_symlink():
        raise ValueError(
            f"output folder {folder} is a symbolic link; choose the folder it points to or "
            "another one"
        )
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output_dir {str(folder)!r} is a file, not a folder; choose a folder")
    entries = (
        sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.is_dir() else []
    )
    if entries and not overwrite:
        raise FileExistsError(
            f"output folder {folder} already exists; pass --overwrite (overwrite=True) to "
            "replace it, or choose another output_dir"
        )
    if entries and not is_model_folder(folder):
        raise FileExistsError(
            f"--overwrite refuses to replace {folder}: it holds {entries[:6]}, not only the "
            "files of a saved model (config, tokenizer, *.safetensors weights, no subfolders); "
            "remove it yourself or choose another output folder"
        )
    return folder
