"""Mesh formats jobq converts: plain facts, no trimesh import (the API uses them)."""

from __future__ import annotations

import re
import unicodedata

from service import errors

INPUT_FORMATS = frozenset({"obj", "stl", "ply", "off", "glb", "gltf", "dae", "3mf", "xyz"})
"""Formats every test in tests/unit/test_convert.py loads from real files."""

OUTPUT_FORMATS = frozenset({"glb", "gltf", "obj", "stl", "ply", "off", "xyz"})
"""Formats every input converts to (point clouds only to POINT_TARGETS; XYZ keeps vertices)."""

SCENE_TARGETS = frozenset({"glb", "gltf"})
"""Targets that hold a scene of several meshes with materials; others get one merged mesh."""

POINT_TARGETS = frozenset({"ply", "glb", "gltf", "obj", "xyz"})
"""Targets that can hold a point cloud (vertices without faces)."""

SIDECARS = frozenset({"mtl", "bin", "png", "jpg", "jpeg"})
"""Files that come with a main file (materials, buffers, textures), never converted alone."""

ARCHIVES = frozenset({"zip"})

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


def extension(name: str) -> str:
    """The lower-case extension of a file name, without the dot ('' if none)."""
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem else ""


def safe_name(name: str, default: str = "upload") -> str:
    """A client's file name reduced to a harmless base name: no directories, control
    characters or leading dots, at most MAX_NAME characters, never empty."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '<>:"|?*\x00')
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    name = name.strip().lstrip(".").strip()
    if ext and not extension(name):
        name = f"{default}.{ext}"  # "....obj" keeps its format, not its dots
    if not name:
        return default
    if len(name) > MAX_NAME:
        ext = extension(name)
        keep = MAX_NAME - len(ext) - 1
        name = f"{name[:keep]}.{ext}" if ext and keep > 0 else name[:MAX_NAME]
    return name


def check_target(target: str | None) -> str:
    """The requested output format, normalised; InvalidRequest if we cannot write it."""
    fmt = (target or "").strip().lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise errors.InvalidRequest(
            f"Cannot convert to {target!r}: choose format from "
            f"{', '.join(sorted(OUTPUT_FORMATS))}.",
            [errors.FieldError("format", "unsupported output format")])
    return fmt


def pick_main(names: list[str]) -> tuple[int, str]:
    """Which uploaded file is the mesh, and its format: the first with a supported mesh
    extension (or a ZIP to unpack). InvalidRequest if there is none."""
    for index, name in enumerate(names):
        fmt = extension(name)
        if fmt in INPUT_FORMATS or fmt in ARCHIVES:
            return index, fmt
    given = ", ".join(repr(n) for n in names) or "none"
    raise errors.InvalidRequest(
        f"No supported mesh among the uploaded files ({given}). Upload one of "
        f"{', '.join(sorted(INPUT_FORMATS))} (with its .mtl/.bin/texture files, or all of "
        "them in one .zip).",
        [errors.FieldError("file", "unsupported input format")])


def content_type(fmt: str) -> str:
    return CONTENT_TYPES.get(fmt, "application/octet-stream")


_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def output_filename(original: str, fmt: str) -> str:
    """Download name of the output: `chair.obj` → `chair.glb`; ASCII, safe in a header."""
    stem = safe_name(original, default="output")
    if extension(stem):
        stem = stem.rsplit(".", 1)[0]
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    stem = _ASCII_SAFE.sub("_", ascii_stem).strip(" ._") or "output"
    return f"{stem[:MAX_NAME]}.{fmt}"
