"""The trimesh conversion. Knows nothing of the database or the queue; runs in the sandbox.

`convert(files, target, options, out_dir, progress)` loads the main file of an upload (its
sidecars — .mtl, .bin, textures — resolved only among the uploaded files, never from the
filesystem), checks there is geometry, and writes `target` into `out_dir`. Options: none yet
(the argument is kept so requests can carry them without a schema change).
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from service import errors
from service.domain import formats

Progress = Callable[[int, str], None]

MAX_ARCHIVE_MEMBERS = 200
MAX_UNPACKED_BYTES = 1_000_000_000
MAX_COMPRESSION_RATIO = 200
"""Zip limits (uploads and zip-based formats such as 3MF): beyond them it is a bomb."""

_LOAD_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError, EOFError,
                zipfile.BadZipFile, NotImplementedError, FileNotFoundError, OSError,
                UnicodeDecodeError, AssertionError, RecursionError)


class InvalidMesh(errors.PermanentJobError):
    """The upload holds no mesh jobq can convert; the message says why."""


@dataclass
class ConversionResult:
    path: Path
    filename: str
    stats: dict[str, Any] = field(default_factory=dict)


class _UploadResolver(trimesh.resolvers.Resolver):
    """Sidecar files by name, from the upload only."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = {name.lower(): data for name, data in files.items()}

    def get(self, name: str) -> bytes:
        key = formats.safe_name(str(name).replace("%20", " ")).lower()
        if key not in self.files:
            raise FileNotFoundError(f"{name} was referenced but not uploaded")
        return self.files[key]

    def write(self, name: str, data: bytes) -> None:
        raise NotImplementedError("uploads are read-only")

    def namespaced(self, namespace: str) -> _UploadResolver:
        return self

    def keys(self):
        return self.files.keys()


def convert(files: list[tuple[str, Path]], target: str, options: dict[str, Any],
            out_dir: Path, progress: Progress | None = None) -> ConversionResult:
    """Convert an upload (a main mesh file with its sidecars, or one ZIP) to `target`."""
    report = progress or (lambda _p, _s: None)
    started = time.monotonic()
    contents = {formats.safe_name(name): path.read_bytes() for name, path in files}
    main_index, fmt = formats.pick_main(list(contents))
    if fmt in formats.ARCHIVES:
        contents = _unpack(contents[list(contents)[main_index]])
        main_index, fmt = formats.pick_main(list(contents))
    main_name = list(contents)[main_index]
    data = contents[main_name]
    _check_content(main_name, fmt, data)
    report(10, "loading")
    loaded = _load(data, fmt, contents)
    report(40, "converting")
    vertices, faces, is_points = _measure(loaded)
    if vertices == 0:
        raise InvalidMesh(f"{main_name} holds no geometry (no vertices were found).")
    if is_points and target not in formats.POINT_TARGETS:
        raise InvalidMesh(
            f"{main_name} is a point cloud (no faces); {target.upper()} cannot hold points. "
            f"Choose one of {', '.join(sorted(formats.POINT_TARGETS))}.")
    report(60, "exporting")
    exported = _export(loaded, target, is_points)
    out_dir.mkdir(parents=True, exist_ok=True)
    filename = formats.output_filename(main_name, target)
    out = out_dir / filename
    out.write_bytes(exported)
    report(100, "exported")
    bounds = _bounds(loaded)
    return ConversionResult(out, filename, {
        "input_format": fmt,
        "output_format": target,
        "input_bytes": sum(len(v) for v in contents.values()),
        "output_bytes": len(exported),
        "vertices": vertices,
        "faces": faces,
        "bounds": bounds,
        "is_point_cloud": is_points,
        "converter": "trimesh",
        "converter_version": trimesh.__version__,
        "convert_seconds": round(time.monotonic() - started, 3),
    })


def _unpack(archive: bytes) -> dict[str, bytes]:
    """A ZIP upload's files, by safe base name, within the bomb limits."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            _check_zip(members, len(archive), "the ZIP upload")
            return {formats.safe_name(m.filename): zf.read(m) for m in members}
    except zipfile.BadZipFile as exc:
        raise InvalidMesh(f"The upload is not a readable ZIP archive: {exc}") from None


def _check_zip(members: list[zipfile.ZipInfo], packed: int, what: str) -> None:
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise InvalidMesh(f"{what} holds {len(members)} files; at most "
                          f"{MAX_ARCHIVE_MEMBERS} are accepted.")
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_UNPACKED_BYTES or unpacked > max(packed, 1) * MAX_COMPRESSION_RATIO:
        raise InvalidMesh(f"{what} would unpack to {unpacked:,} bytes from {packed:,}: "
                          "refused as a decompression bomb.")


def _check_content(name: str, fmt: str, data: bytes) -> None:
    """Cheap checks that the bytes are what the extension says, before any parser runs."""
    if not data.strip():
        raise InvalidMesh(f"{name} is empty.")
    head = data[:64]
    is_glb = head.startswith(b"glTF")
    is_zip = head.startswith(b"PK\x03\x04")
    if is_glb and fmt != "glb":
        raise InvalidMesh(f"{name} is named .{fmt} but holds binary glTF (GLB): rename it .glb.")
    if fmt == "glb" and not is_glb:
        raise InvalidMesh(f"{name} is named .glb but is not binary glTF (no 'glTF' header).")
    if is_zip and fmt not in ("3mf",):
        raise InvalidMesh(f"{name} is named .{fmt} but is a ZIP archive: upload it as .zip.")
    if fmt == "3mf":
        if not is_zip:
            raise InvalidMesh(f"{name} is named .3mf but is not a 3MF (ZIP) package.")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                _check_zip(zf.infolist(), len(data), name)
        except zipfile.BadZipFile as exc:
            raise InvalidMesh(f"{name} is a damaged 3MF (ZIP) package: {exc}") from None
    if fmt == "ply" and not head.lstrip().lower().startswith(b"ply"):
        raise InvalidMesh(f"{name} is named .ply but has no 'ply' header.")
    if fmt in ("obj", "off", "xyz", "gltf", "dae") and b"\x00" in data[:4096]:
        raise InvalidMesh(f"{name} is named .{fmt}, a text format, but holds binary data.")


def _load(data: bytes, fmt: str, contents: dict[str, bytes]) -> Any:
    try:
        return trimesh.load(io.BytesIO(data), file_type=fmt,
                            resolver=_UploadResolver(contents), process=False)
    except InvalidMesh:
        raise
    except MemoryError:
        raise InvalidMesh("The mesh is too large to load within the memory limit.") from None
    except ImportError as exc:
        raise InvalidMesh(f"Reading .{fmt} needs a library this worker lacks: {exc}") from None
    except _LOAD_ERRORS as exc:
        raise InvalidMesh(f"The .{fmt} file could not be read: "
                          f"{type(exc).__name__}: {exc}"[:500]) from None
    except Exception as exc:  # third-party parsers raise their own types (DaeMalformedError...)
        raise InvalidMesh(f"The .{fmt} file could not be read: "
                          f"{type(exc).__name__}: {exc}"[:500]) from None


def _geometries(loaded: Any) -> list[Any]:
    """Every placed geometry: a scene may place one mesh several times."""
    if isinstance(loaded, trimesh.Scene):
        return [loaded.geometry[loaded.graph[node][1]] for node in loaded.graph.nodes_geometry]
    return [loaded]


def _measure(loaded: Any) -> tuple[int, int, bool]:
    """Vertices and faces in all, and whether it is only points."""
    vertices = faces = 0
    for geometry in _geometries(loaded):
        found = getattr(geometry, "vertices", None)
        vertices += 0 if found is None else len(found)
        found = getattr(geometry, "faces", None)
        faces += 0 if found is None else len(found)
    return vertices, faces, vertices > 0 and faces == 0


def _bounds(loaded: Any) -> list[list[float]] | None:
    bounds = loaded.bounds
    return None if bounds is None else np.asarray(bounds, dtype=float).round(6).tolist()


def _export(loaded: Any, target: str, is_points: bool) -> bytes:
    try:
        if target in formats.SCENE_TARGETS:
            scene = loaded if isinstance(loaded, trimesh.Scene) else trimesh.Scene(loaded)
            if target == "gltf":
                files = scene.export(file_type="gltf", embed_buffers=True)
                return files if isinstance(files, bytes) else next(iter(files.values()))
            return scene.export(file_type="glb")
        single = _merge(loaded, is_points or target == "xyz")
        if target == "xyz" and not isinstance(single, trimesh.PointCloud):
            single = trimesh.PointCloud(single.vertices)  # XYZ keeps the vertices only
        exported = single.export(file_type=target)
        return exported.encode() if isinstance(exported, str) else exported
    except MemoryError:
        raise InvalidMesh("The mesh is too large to export within the memory limit.") from None
    except (ValueError, KeyError, IndexError, TypeError, NotImplementedError) as exc:
        raise InvalidMesh(f"Could not write {target.upper()}: {type(exc).__name__}: {exc}"
                          [:500]) from None


def _merge(loaded: Any, is_points: bool) -> Any:
    """One mesh (or point cloud) for targets that hold no scene: the scene's geometry, placed
    by its transforms and concatenated."""
    if not isinstance(loaded, trimesh.Scene):
        return loaded
    if is_points:
        points = [np.asarray(g.vertices) for g in loaded.dump()]
        return trimesh.PointCloud(np.vstack(points))
    meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    return trimesh.util.concatenate(meshes)
