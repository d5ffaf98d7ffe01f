"""The inputs of a custom mosaic: which files, and what each one is.

`expand_input_source` turns the user's INPUT (a text file listing Level-2
files, a glob pattern, or a Python list) into file paths; `read_inputs`
checks every file and reads its WCS, shape and filter without the pixel
data. Both raise `~romosaic.errors.RomosaicInputError` with one line naming
the problem and the file, before any output exists.
"""

import glob
from dataclasses import dataclass
from pathlib import Path

import asdf

from ..errors import RomosaicInputError
from ..models import one_line_message

__all__ = ["InputImage", "expand_input_source", "read_inputs"]

_GLOB_CHARACTERS = set("*?[")


@dataclass
class InputImage:
    """What the grid and the grouping need from one Level-2 file."""

    path: Path
    wcs: object
    shape: tuple
    filter_name: str

    @property
    def name(self):
        return self.path.name


def expand_input_source(source):
    """The Level-2 files an INPUT names, in order, without duplicates.

    Parameters
    ----------
    source : str, os.PathLike or sequence of them
        A text file listing files one per line (blank lines and lines
        starting with ``#`` ignored; relative paths are relative to the list
        file's directory), a glob pattern, a single file, or a list of files.

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    RomosaicInputError
        For an empty list, a pattern that matches nothing, or a listed file
        that does not exist.
    """
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        if not paths:
            raise RomosaicInputError("the list of input files is empty")
        where = "the input list"
    else:
        text = _unquote(str(source).strip())
        if not text:
            raise RomosaicInputError("no input given (a list file or a glob pattern)")
        path = Path(text)
        if path.is_file() and not _is_asdf(path):
            paths = _read_list_file(path)
            where = str(path)
        elif path.is_file():
            paths, where = [path], str(path)
        elif _GLOB_CHARACTERS & set(text):
            paths = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_file()]
            if not paths:
                raise RomosaicInputError(f"{text}: the pattern matches no file")
            where = text
        elif path.is_dir():
            raise RomosaicInputError(
                f"{path}: is a directory; give a list file or a glob pattern such as "
                f"'{path / '*_cal.asdf'}'")
        else:
            raise RomosaicInputError(f"{path}: file not found")
    unique = []
    seen = set()
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    for path in unique:
        if not path.is_file():
            raise RomosaicInputError(f"{path}: file not found (listed in {where})")
    return unique


def _unquote(text):
    # A pattern quoted twice (by a wrapper script, say) reaches us with its quotes.
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return text


def _is_asdf(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(5) == b"#ASDF"
    except OSError:
        return False


def _read_list_file(path):
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise RomosaicInputError(
            f"{path}: is neither a text list of files nor an ASDF file") from None
    except OSError as error:
        raise RomosaicInputError(f"{path}: cannot be read ({error.strerror})") from None
    names = [line.strip() for line in lines]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise RomosaicInputError(f"{path}: the list of input files is empty")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, names)]


def read_inputs(paths):
    """Check each file is a Level-2 image and read its geometry and filter.

    Only the ASDF tree is parsed; pixel arrays are not read.

    Returns
    -------
    list of InputImage

    Raises
    ------
    RomosaicInputError
        Naming the first file that is unreadable, not a Level-2 image, or
        lacks a WCS or filter.
    """
    return [_read_one(Path(p)) for p in paths]


def _read_one(path):
    try:
        with asdf.open(path, lazy_load=True, memmap=False) as af:
            roman = af.tree.get("roman")
            tag = getattr(roman, "_tag", None) or ""
            if roman is None or not _is_level2_image(roman, tag):
                kind = type(roman).__name__ if roman is not None else "no Roman data model"
                raise RomosaicInputError(
                    f"{path}: is {_article(kind)}, not a Level-2 calibrated image "
                    "(WfiImage / ImageModel)")
            meta = roman["meta"]
            wcs = meta.get("wcs")
            shape = tuple(int(n) for n in roman["data"].shape)
            filter_name = str(meta["instrument"]["optical_element"])
    except RomosaicInputError:
        raise
    except Exception as error:  # asdf, yaml and schema errors alike
        raise RomosaicInputError(
            f"{path}: not a readable Roman data file ({one_line_message(error)})") from None
    if wcs is None:
        raise RomosaicInputError(f"{path}: has no WCS (meta.wcs)")
    if len(shape) != 2:
        raise RomosaicInputError(f"{path}: data is not a 2-D image (shape {shape})")
    return InputImage(path=path, wcs=wcs, shape=shape, filter_name=filter_name)


def _is_level2_image(node, tag):
    if "wfi_image" in tag:
        return True
    return type(node).__name__ == "WfiImage"


def _article(kind):
    if kind.startswith("no "):
        return kind
    return f"an {kind}" if kind[:1].lower() in "aeiou" else f"a {kind}"
