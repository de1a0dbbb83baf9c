"""Mesh formats jobq converts, and safe names for uploads and downloads. No trimesh import:
the API uses this module too."""

from __future__ import annotations

import re
import unicodedata

from service import errors

INPUT_FORMATS = frozenset({"obj", "stl", "ply", "off", "glb", "gltf", "dae", "3mf", "xyz"})
"""Formats that load: each has a real file in tests/unit/test_convert.py's corpus matrix."""

OUTPUT_FORMATS = frozenset({"glb", "gltf", "obj", "stl", "ply", "off", "xyz"})
"""Formats every loadable input converts to (point clouds only to POINT_TARGETS)."""

SCENE_TARGETS = frozenset({"glb", "gltf"})
"""Targets that keep a scene: several meshes, their placement, materials and textures."""

SINGLE_MESH_TARGETS = OUTPUT_FORMATS - SCENE_TARGETS
"""Targets that hold one mesh: a scene is merged, placed by its transforms, before export."""

POINT_TARGETS = frozenset({"ply", "glb", "gltf", "obj", "xyz"})
"""Targets that can hold a point cloud (vertices without faces); STL and OFF cannot."""

SIDECARS = frozenset({"mtl", "bin", "png", "jpg", "jpeg"})
"""Files that come with a main file (materials, buffers, textures), never converted alone."""

ARCHIVES = frozenset({"zip"})
"""Uploads unpacked first; the model and its sidecars are inside."""

CONTENT_TYPES = {
    "glb": "model/gltf-binary",
    "gltf": "model/gltf+json",
    "obj": "model/obj",
    "stl": "model/stl",
    "ply": "application/x-ply",
    "off": "application/x-off",
    "xyz": "text/plain",
}

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
    return CONTENT_TYPES.get(fmt, "application/octet-stream")


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
