"""Mesh formats jobq converts, and safe names for uploads and downloads. No trimesh import:
the API uses this module too."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from service import errors

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class Format:
    """What jobq knows about one file format: a row of FORMATS."""

    name: str
    """The extension, lower case, without the dot."""
    label: str
    """How a message names it."""
    reads: bool = True
    """Loads: each has a real file in tests/unit/test_convert.py's corpus matrix."""
    writes: bool = False
    """Every loadable input converts to it (point clouds only where `points`)."""
    content_type: str = OCTET_STREAM
    """The media type an output of this format is downloaded with."""
    scene: bool = False
    """Keeps a scene: several meshes, their placement, materials and textures. Other targets
    hold one mesh: a scene is merged, placed by its transforms, before export."""
    points: bool = False
    """Can hold a point cloud (vertices without faces)."""
    text: bool = False
    """Always text: binary bytes in such a file mean it is something else."""
    signed: bool = False
    """Its files always start with a signature the worker's sniffer knows."""
    archive: bool = False
    """Unpacked first; the model and its sidecars are inside."""


FORMATS = {f.name: f for f in (
    Format("glb", "binary glTF (GLB)", writes=True, content_type="model/gltf-binary",
           scene=True, points=True, signed=True),
    Format("gltf", "glTF JSON", writes=True, content_type="model/gltf+json", scene=True,
           points=True, text=True, signed=True),
    Format("obj", "OBJ", writes=True, content_type="model/obj", points=True, text=True),
    Format("stl", "STL", writes=True, content_type="model/stl"),
    Format("ply", "PLY", writes=True, content_type="application/x-ply", points=True,
           signed=True),
    Format("off", "OFF", writes=True, content_type="application/x-off", text=True),
    Format("xyz", "XYZ points", writes=True, content_type="text/plain", points=True,
           text=True),
    Format("dae", "COLLADA (DAE)", text=True, signed=True),
    Format("3mf", "3MF", signed=True),
    Format("zip", "a ZIP archive", reads=False, archive=True),
)}
"""Every format jobq reads, writes or unpacks, one row each; the sets below derive from it."""


def _where(flag: str) -> frozenset[str]:
    return frozenset(name for name, f in FORMATS.items() if getattr(f, flag))


INPUT_FORMATS = _where("reads")
OUTPUT_FORMATS = _where("writes")
OUTPUT_MEDIA = sorted({FORMATS[name].content_type for name in OUTPUT_FORMATS})
"""The media types an output file is sent as (the OpenAPI document lists them)."""
SCENE_TARGETS = OUTPUT_FORMATS & _where("scene")
SINGLE_MESH_TARGETS = OUTPUT_FORMATS - SCENE_TARGETS
POINT_TARGETS = OUTPUT_FORMATS & _where("points")
TEXT_FORMATS = _where("text")
SIGNED_FORMATS = _where("signed")
ARCHIVES = _where("archive")

SIDECARS = frozenset({"mtl", "bin", "png", "jpg", "jpeg"})
"""Files that come with a main file (materials, buffers, textures), never converted alone."""

MAX_NAME = 120
"""Longest file name kept, extension included (file systems allow 255 bytes; UTF-8 needs 4
per character at worst, and a header value needs some room)."""

_EXTENSION = re.compile(r"\w{1,16}")
_UNSAFE = '<>:"|?*'
_NOT_HEADER_SAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def extension(name: str) -> str:
    """The lower-case extension of a file name, without the dot ('' if none)."""
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem and _EXTENSION.fullmatch(ext) else ""


def safe_name(name: str, default: str = "upload") -> str:
    """A client's file name as a harmless base name: no directories, control characters or
    leading dots, at most MAX_NAME characters, never empty ("....obj" becomes "upload.obj")."""
    name = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in _UNSAFE)
    stem, dot, ext = name.rpartition(".")
    ext = ext.strip()
    if not dot or not _EXTENSION.fullmatch(ext):
        stem, ext = name, ""  # "a.b c" has no extension: keep it whole
    stem = (stem.strip(" .") or default)[: MAX_NAME - len(ext) - 1 if ext else MAX_NAME]
    return f"{stem}.{ext}" if ext else stem


def output_filename(original: str, fmt: str) -> str:
    """Download name of the output: `chair.obj` → `chair.glb`; ASCII, safe in a header;
    `output.<fmt>` when nothing usable is left of the original."""
    name = safe_name(original, default="output")
    stem = name.rsplit(".", 1)[0] if extension(name) else name
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    stem = _NOT_HEADER_SAFE.sub("_", ascii_stem).strip(" ._-") or "output"
    return f"{stem[: MAX_NAME - len(fmt) - 1]}.{fmt}"


def content_type(fmt: str) -> str:
    """The media type to download a file of this format with."""
    known = FORMATS.get(fmt)
    return known.content_type if known else OCTET_STREAM


def label(fmt: str) -> str:
    """How a message names a format."""
    return FORMATS[fmt].label


def check_target(target: str | None) -> str:
    """The requested output format, normalised; InvalidRequest if we cannot write it."""
    fmt = (target or "").strip().lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise errors.InvalidRequest(
            f"Cannot convert to {target!r}: choose a format from "
            f"{', '.join(sorted(OUTPUT_FORMATS))}.",
            [errors.FieldError("format", "unsupported output format")])
    return fmt


def pick_main(names: list[str]) -> tuple[int, str]:
    """Which uploaded file is the model, and its format (or "zip" for an archive to unpack).

    By extension, case-insensitive; the others are sidecars. InvalidRequest if no file or
    more than one file is a model: guessing which one was meant would convert the wrong one.
    """
    found = [(i, extension(n)) for i, n in enumerate(names)
             if extension(n) in INPUT_FORMATS | ARCHIVES]
    if len(found) == 1 and (found[0][1] not in ARCHIVES or len(names) == 1):
        return found[0]
    supported = ", ".join(sorted(INPUT_FORMATS))
    if not found:
        given = ", ".join(repr(n) for n in names) or "none"
        raise errors.InvalidRequest(
            f"No supported mesh among the uploaded files ({given}). Upload one of "
            f"{supported} (with its .mtl, .bin or texture files, or all of them in one .zip).",
            [errors.FieldError("file", "unsupported input format")])
    if len(found) == 1:
        raise errors.InvalidRequest(
            f"{names[found[0][0]]!r} came with other files; upload a ZIP on its own, with the "
            "model and its files inside it.", [errors.FieldError("file", "ZIP not alone")])
    models = ", ".join(repr(names[i]) for i, _ in found)
    raise errors.InvalidRequest(
        f"Several models among the uploaded files ({models}); upload one per conversion, "
        "with its .mtl, .bin or texture files.",
        [errors.FieldError("file", "more than one model")])
