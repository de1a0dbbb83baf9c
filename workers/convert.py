"""The trimesh conversion. Knows nothing of the database or the queue; runs in the sandbox.

`convert(files, target, options, out_dir, progress)` takes one upload: a model with its
sidecars (.mtl, .bin, textures) or one ZIP holding them. Sidecars are found among the uploaded
files only, never on the filesystem. The bytes must be what the extension says, there must be
geometry, and the output goes into `out_dir` under a safe name. Scenes stay scenes in GLB and
glTF and are merged into one mesh for the other targets; point clouds go only where points fit.

Options: none yet. The argument is kept so requests can carry options without a schema change;
unknown keys are ignored.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

import numpy as np
import trimesh

from service import errors
from service.domain import formats

Progress = Callable[[int, str], None]

MAX_ARCHIVE_MEMBERS = 200
MAX_UNPACKED_BYTES = 500_000_000
MAX_COMPRESSION_RATIO = 200
"""ZIP limits, for uploads and for 3MF packages. Model files compress 3-10x; a ratio past 200
or half a gigabyte unpacked is a bomb, and would not load within the memory limit anyway."""

_SNIFF_BYTES = 64 * 1024
_XML_DECLARATIONS = (b"<!DOCTYPE", b"<!ENTITY")


class InvalidMesh(errors.PermanentJobError):
    """The upload holds no model jobq can read; the message says why."""


class UnsupportedConversion(errors.PermanentJobError):
    """The model is fine but the target cannot hold it (points to STL, an unknown target)."""


@dataclass
class ConversionResult:
    """The written output file, its download name, and what was converted."""

    path: Path
    filename: str
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Shape:
    vertices: int
    faces: int
    geometries: int

    @property
    def is_points(self) -> bool:
        return self.faces == 0


class _UploadResolver(trimesh.resolvers.Resolver):
    """Sidecar files by base name, from the upload only; remembers what was missing."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = {name.lower(): data for name, data in files.items()}
        self.missing: list[str] = []

    def get(self, name: str) -> bytes:
        key = formats.safe_name(unquote(str(name))).lower()
        if key not in self.files:
            self.missing.append(key)
            raise FileNotFoundError(f"{name} is referenced but was not uploaded")
        return self.files[key]

    def write(self, name: str, data: bytes) -> None:
        raise NotImplementedError("uploads are read-only")

    def namespaced(self, namespace: str) -> _UploadResolver:
        return self  # every file is known by its base name already

    def keys(self):
        return self.files.keys()


def convert(files: list[tuple[str, Path]], target: str, options: dict[str, Any],
            out_dir: Path, progress: Progress | None = None) -> ConversionResult:
    """Convert an upload (a model with its sidecars, or one ZIP) to `target` in `out_dir`."""
    report = progress or (lambda _percent, _stage: None)
    started = time.monotonic()
    target = _check_target(target)
    upload = _read_upload(files)
    name, fmt = _main_file(upload)
    report(10, "loading")
    resolver = _UploadResolver(upload)
    loaded = _load(name, fmt, upload[name], resolver)
    report(40, "converting")
    shape = _check_geometry(name, fmt, loaded)
    _check_complete(name, fmt, upload[name], shape)
    _check_target_holds(name, shape, target)
    report(60, "exporting")
    data = _export(loaded, target, shape.is_points)
    filename = formats.output_filename(name, target)
    path = _write(out_dir, filename, data)
    report(100, "exported")
    return ConversionResult(path, filename, {
        "input_format": fmt,
        "output_format": target,
        "input_bytes": sum(len(v) for v in upload.values()),
        "output_bytes": len(data),
        "vertices": shape.vertices,
        "faces": shape.faces,
        "geometries": shape.geometries,
        "bounds": np.asarray(loaded.bounds, dtype=float).round(6).tolist(),
        "is_point_cloud": shape.is_points,
        "merged": shape.geometries > 1 and target in formats.SINGLE_MESH_TARGETS,
        "missing_files": sorted(set(resolver.missing)),
        "converter": "trimesh",
        "converter_version": trimesh.__version__,
        "convert_seconds": round(time.monotonic() - started, 3),
    })


def _check_target(target: str) -> str:
    fmt = (target or "").strip().lower().lstrip(".")
    if fmt not in formats.OUTPUT_FORMATS:
        raise UnsupportedConversion(
            f"Cannot write {target!r}: choose one of {', '.join(sorted(formats.OUTPUT_FORMATS))}.")
    return fmt


def _read_upload(files: list[tuple[str, Path]]) -> dict[str, bytes]:
    """The uploaded files by safe base name; a ZIP is unpacked in their place."""
    upload: dict[str, bytes] = {}
    for name, path in files:
        _add_file(upload, formats.safe_name(name), path.read_bytes(), "upload")
    name, fmt = _pick(upload)
    return _unpack(name, upload[name]) if fmt in formats.ARCHIVES else upload


def _add_file(upload: dict[str, bytes], name: str, data: bytes, where: str) -> None:
    # Sidecars are found by base name, case-insensitively: two files that share one would
    # make it a guess which is meant.
    if name.lower() in (n.lower() for n in upload):
        raise InvalidMesh(f"The {where} holds two files named {name!r}; names must differ.")
    upload[name] = data


def _pick(upload: dict[str, bytes]) -> tuple[str, str]:
    """The model's (or archive's) name and format, chosen the way the API chose it."""
    names = list(upload)
    try:
        index, fmt = formats.pick_main(names)
    except errors.InvalidRequest as exc:
        raise InvalidMesh(str(exc)) from None
    return names[index], fmt


def _main_file(upload: dict[str, bytes]) -> tuple[str, str]:
    """The model's name and format, its bytes checked against the format."""
    name, fmt = _pick(upload)
    if fmt in formats.ARCHIVES:
        raise InvalidMesh(f"The ZIP holds another ZIP, {name!r}; put the model and its files "
                          "directly in one ZIP.")
    _check_content(name, fmt, upload[name])
    return name, fmt


def _unpack(name: str, archive: bytes) -> dict[str, bytes]:
    """A ZIP upload's files by safe base name, within the bomb limits, refusing paths that
    point outside the archive."""
    upload: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            _check_archive(name, zf.infolist(), len(archive))
            for member in zf.infolist():
                if member.is_dir() or _is_junk(member.filename):
                    continue
                _check_member_path(name, member.filename)
                _add_file(upload, formats.safe_name(member.filename), zf.read(member), name)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
        raise InvalidMesh(f"{name} is not a readable ZIP archive: {_reason(exc)}") from exc
    return upload


def _is_junk(member: str) -> bool:
    # macOS adds AppleDouble copies ("__MACOSX/._cube.obj") that share the model's extension.
    return member.startswith("__MACOSX/") or PurePosixPath(member).name.startswith("._")


def _check_member_path(archive: str, member: str) -> None:
    path = PurePosixPath(member.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"[A-Za-z]:", member):
        raise InvalidMesh(f"{archive} holds {member[:100]!r}, a path outside the archive; "
                          "such archives are refused.")


def _check_archive(name: str, members: list[zipfile.ZipInfo], packed: int) -> None:
    """Refuse a ZIP (an upload or a 3MF) that would unpack to too much, before unpacking.
    The sizes are the declared ones, which zipfile enforces while it reads."""
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise InvalidMesh(f"{name} holds {len(members)} files; at most "
                          f"{MAX_ARCHIVE_MEMBERS} are accepted.")
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_UNPACKED_BYTES or unpacked > max(packed, 1) * MAX_COMPRESSION_RATIO:
        raise InvalidMesh(f"{name} would unpack to {unpacked:,} bytes from {packed:,}: "
                          "refused as a decompression bomb.")


def _check_content(name: str, fmt: str, data: bytes) -> None:
    """Cheap checks that the bytes are what the extension says, before any parser runs."""
    if not data.strip():
        raise InvalidMesh(f"{name} is empty.")
    found = _sniff(data)
    if found == "zip" and fmt != "3mf":
        raise InvalidMesh(f"{name} is named .{fmt} but is a ZIP archive: upload a ZIP as .zip "
                          "(and a 3MF as .3mf).")
    if found not in (None, fmt, "zip"):
        raise InvalidMesh(f"{name} is named .{fmt} but holds {formats.label(found)}: "
                          f"rename it .{found}.")
    if fmt in formats.SIGNED_FORMATS and found is None:
        raise InvalidMesh(f"{name} is named .{fmt} but is not {formats.label(fmt)} "
                          "(its first bytes are not the format's signature).")
    if fmt in formats.TEXT_FORMATS and b"\x00" in data[:_SNIFF_BYTES]:
        raise InvalidMesh(f"{name} is named .{fmt}, a text format, but holds binary data.")
    if fmt in _FORMAT_CHECKS:
        _FORMAT_CHECKS[fmt](name, data)


def _sniff(data: bytes) -> str | None:
    """The format the first bytes prove, where a cheap signature exists (OBJ and XYZ have
    none; a binary STL is known by its length matching its triangle count)."""
    head = data[:_SNIFF_BYTES]
    text = head.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()  # a UTF-8 byte-order mark
    if head.startswith(b"glTF"):
        return "glb"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if _binary_stl_size(data) == len(data):
        return "stl"
    if re.match(rb"ply\s", text):
        return "ply"
    if re.match(rb"[A-Z0-9]{0,5}OFF\s", text):  # OFF and its COFF, NOFF, STOFF, 4OFF kin
        return "off"
    if text.startswith(b"{"):
        return "gltf"
    if text.startswith(b"<") and b"<COLLADA" in head:
        return "dae"
    if re.match(rb"solid\b", text) and b"facet" in head and b"\x00" not in head:
        return "stl"
    return None


def _binary_stl_size(data: bytes) -> int | None:
    """The length a binary STL with this header must have: 80 bytes, a count, 50 per face."""
    if len(data) < 84:
        return None
    return 84 + 50 * struct.unpack_from("<I", data, 80)[0]


def _check_binary_stl(name: str, data: bytes) -> None:
    if _is_text(data):
        if not re.match(rb"solid\b", data.lstrip()):
            raise InvalidMesh(f"{name} is named .stl but is text that is not STL "
                              "(an ASCII STL starts with 'solid').")
        return  # ASCII STL: the parser judges the rest
    expected = _binary_stl_size(data)
    if expected is None:
        raise InvalidMesh(f"{name} is too short ({len(data)} bytes) to be an STL file.")
    if expected > len(data):
        raise InvalidMesh(f"{name} is truncated: its header promises "
                          f"{(expected - 84) // 50:,} triangles ({expected:,} bytes) but the file "
                          f"has {len(data):,} bytes.")


def _is_text(data: bytes) -> bool:
    """Whether the first bytes are printable text, as no binary STL's are."""
    head = data[:_SNIFF_BYTES]
    return not re.search(rb"[\x00-\x08\x0e-\x1f\x7f]", head)


def _check_glb_length(name: str, data: bytes) -> None:
    declared = struct.unpack_from("<I", data, 8)[0] if len(data) >= 12 else 0
    if declared > len(data):
        raise InvalidMesh(f"{name} is truncated: its header says {declared:,} bytes but the "
                          f"file has {len(data):,}.")


def _check_json(name: str, data: bytes) -> None:
    # trimesh reads text that is not JSON as a file name to look up, and then reports a
    # missing file: say what is really wrong.
    try:
        json.loads(data)
    except ValueError as exc:
        raise InvalidMesh(f"{name} is not valid glTF JSON (truncated or damaged?): "
                          f"{exc}") from None


def _check_package(name: str, data: bytes) -> None:
    """A 3MF is a ZIP of XML parts: the same bomb limits, and no DTDs in its XML."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            _check_archive(name, zf.infolist(), len(data))
            for member in zf.infolist():
                if member.filename.lower().endswith((".model", ".rels", ".xml")):
                    with zf.open(member) as part:
                        _check_xml(f"{name}:{member.filename}", part.read(_SNIFF_BYTES))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise InvalidMesh(f"{name} is a damaged 3MF package: {_reason(exc)}") from exc


def _check_xml(name: str, data: bytes) -> None:
    # Neither COLLADA nor 3MF uses a DTD; entity declarations in one are an XML bomb or an
    # attempt to read local files. The parsers resist both, but refusing says so plainly.
    head = data[:_SNIFF_BYTES]
    if any(marker in head for marker in _XML_DECLARATIONS):
        raise InvalidMesh(f"{name} declares a DTD or XML entities, which model files never "
                          "need: refused as a possible XML bomb.")


_FORMAT_CHECKS: dict[str, Callable[[str, bytes], None]] = {
    "stl": _check_binary_stl, "glb": _check_glb_length, "gltf": _check_json,
    "3mf": _check_package, "dae": _check_xml,
}


def _load(name: str, fmt: str, data: bytes, resolver: _UploadResolver) -> Any:
    """The model as trimesh reads it; any loader failure becomes InvalidMesh."""
    try:
        return trimesh.load(io.BytesIO(data), file_type=fmt, resolver=resolver, process=False)
    except MemoryError:
        raise InvalidMesh(f"{name} is too large to load within the memory limit.") from None
    except ImportError as exc:
        raise InvalidMesh(f"Reading {formats.label(fmt)} needs a library this worker lacks: "
                          f"{exc}") from exc
    except Exception as exc:  # parsers raise anything: ValueError, KeyError, DaeMalformedError...
        raise InvalidMesh(
            f"{name} could not be read as {formats.label(fmt)}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """An exception as a short readable phrase, without repeating its type name."""
    text = str(exc).strip() or "no details"
    kind = type(exc).__name__
    text = text.removeprefix(f"{kind}: ").removeprefix(f"{kind}: ")
    return f"{text[:300]} ({kind})"


def _placed(loaded: Any) -> list[Any]:
    """Every placed geometry: a scene may place one mesh several times."""
    if isinstance(loaded, trimesh.Scene):
        return [loaded.geometry[loaded.graph[node][1]] for node in loaded.graph.nodes_geometry]
    return [loaded]


def _check_geometry(name: str, fmt: str, loaded: Any) -> _Shape:
    """Count what was loaded and refuse nothing-at-all, NaNs and faces that point nowhere:
    trimesh returns an empty scene, without an error, for several broken files."""
    shape = _Shape(0, 0, 0)
    for geometry in _placed(loaded):
        vertices = np.asarray(getattr(geometry, "vertices", np.empty((0, 3))))
        faces = getattr(geometry, "faces", None)
        faces = np.empty((0, 3), dtype=np.int64) if faces is None else np.asarray(faces)
        if not np.isfinite(vertices).all():
            raise InvalidMesh(f"{name} has vertices that are not finite numbers (NaN or inf).")
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise InvalidMesh(f"{name} has faces that refer to vertices it does not have.")
        shape.vertices += len(vertices)
        shape.faces += len(faces)
        shape.geometries += 1
    if shape.vertices == 0:
        raise InvalidMesh(f"{name} holds no geometry: no vertices were found. The file may be "
                          f"empty, truncated or not really {formats.label(fmt)}.")
    return shape


def _check_complete(name: str, fmt: str, data: bytes, shape: _Shape) -> None:
    """PLY and OFF declare their counts up front; a truncated text file loads partly without
    an error, and a mesh cut before its faces would pass for a point cloud."""
    declared = _declared_counts(fmt, data)
    if declared is None:
        return
    vertices, faces = declared
    # Polygons are split into triangles, so more faces than declared is fine; fewer is not.
    if shape.vertices < vertices or shape.faces < faces:
        raise InvalidMesh(f"{name} is truncated or damaged: its header declares {vertices:,} "
                          f"vertices and {faces:,} faces, but {shape.vertices:,} and "
                          f"{shape.faces:,} were read.")


def _declared_counts(fmt: str, data: bytes) -> tuple[int, int] | None:
    head = data[:_SNIFF_BYTES]
    if fmt == "ply":
        header = head.split(b"end_header", 1)[0]
        return _ply_count(header, b"vertex"), _ply_count(header, b"face")
    if fmt == "off":
        tokens = re.sub(rb"#[^\n]*", b"", head).split()
        if len(tokens) >= 3 and tokens[0] in (b"OFF", b"COFF", b"NOFF", b"CNOFF"):
            with contextlib.suppress(ValueError):
                return int(tokens[1]), int(tokens[2])
    return None


def _ply_count(header: bytes, element: bytes) -> int:
    found = re.search(rb"element\s+" + element + rb"\s+(\d+)", header)
    return int(found.group(1)) if found else 0


def _check_target_holds(name: str, shape: _Shape, target: str) -> None:
    if shape.is_points and target not in formats.POINT_TARGETS:
        raise UnsupportedConversion(
            f"{name} is a point cloud ({shape.vertices:,} points, no faces) and "
            f"{target.upper()} holds only surfaces: convert it to one of "
            f"{', '.join(sorted(formats.POINT_TARGETS))}.")


def _export(loaded: Any, target: str, is_points: bool) -> bytes:
    """The converted file's bytes; a writer failure becomes InvalidMesh."""
    try:
        if target in formats.SCENE_TARGETS:
            return _export_scene(loaded, target)
        return _export_single(_merge(loaded, is_points or target == "xyz"), target)
    except MemoryError:
        raise InvalidMesh("The model is too large to export within the memory limit.") from None
    except Exception as exc:
        raise InvalidMesh(f"Could not write {target.upper()}: {_reason(exc)}") from exc


def _export_scene(loaded: Any, target: str) -> bytes:
    scene = loaded if isinstance(loaded, trimesh.Scene) else trimesh.Scene(loaded)
    if target == "glb":
        return scene.export(file_type="glb")
    files = scene.export(file_type="gltf", embed_buffers=True)
    return files if isinstance(files, bytes) else next(iter(files.values()))


def _export_single(single: Any, target: str) -> bytes:
    exported = single.export(file_type=target)
    if target == "obj":
        # trimesh names a material library it cannot hand us in one file; a download would
        # point at a missing file. The geometry, UVs and vertex colours stay.
        exported = re.sub(r"(?m)^mtllib .*\n", "", exported)
    return exported.encode() if isinstance(exported, str) else exported


def _merge(loaded: Any, as_points: bool) -> Any:
    """One mesh (or point cloud) for targets that hold no scene: the scene's geometry, placed
    by its transforms and concatenated."""
    if not isinstance(loaded, trimesh.Scene):
        return trimesh.PointCloud(loaded.vertices) if as_points else loaded
    placed = loaded.dump()
    if as_points:
        return trimesh.PointCloud(np.vstack([np.asarray(g.vertices) for g in placed]))
    return trimesh.util.concatenate(
        [g for g in placed if isinstance(g, trimesh.Trimesh) and len(g.faces)])


def _write(out_dir: Path, filename: str, data: bytes) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    if path.parent != out_dir:  # output_filename returns a base name; keep it that way
        raise InvalidMesh(f"Refusing to write {filename!r} outside the work directory.")
    path.write_bytes(data)
    return path
