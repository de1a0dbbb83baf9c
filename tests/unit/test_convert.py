"""The trimesh conversion on real corpus files and on hostile input. No database."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from service import errors
from service.domain import formats
from workers import convert

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"

# (files of one upload, is a point cloud). From shared/corpus/INDEX.md: every loadable model.
LOADABLE = [
    (["20mm-xyz-cube.stl"], False), (["Duck.glb"], False), (["P_XPM_0331_01.3mf"], False),
    (["TestScene.gltf", "TestScene.bin"], False), (["ballA.off"], False),
    (["bunny.ply"], False), (["busted.STL"], False), (["comments.off"], False),
    (["cube.OBJ"], False), (["cube_invalid_shininess.dae"], False),
    (["multibody.stl"], False), (["notenoughindices.obj"], False),
    (["rabbit.obj", "rabbit.mtl"], False),
    (["obj_points.obj"], True), (["points_ascii.ply"], True),
    (["points_cloudcompare.xyz"], True),
]
BROKEN = ["empty.obj", "empty.stl"]


def run(files: list[tuple[str, Path]], target: str, tmp_path: Path) -> convert.ConversionResult:
    return convert.convert(files, target, {}, tmp_path / "out")


def corpus(names: list[str]) -> list[tuple[str, Path]]:
    assert CORPUS.is_dir(), f"the mesh corpus is missing at {CORPUS}"
    return [(name, CORPUS / name) for name in names]


def reload(result: convert.ConversionResult, target: str):
    return trimesh.load(result.path, file_type=target, process=False)


def counts(loaded) -> tuple[int, int]:
    """Vertices and faces as placed (a scene may place a mesh more than once)."""
    geometries = ([loaded.geometry[loaded.graph[n][1]] for n in loaded.graph.nodes_geometry]
                  if isinstance(loaded, trimesh.Scene) else [loaded])
    faces = sum(len(g.faces) for g in geometries if hasattr(g, "faces") and g.faces is not None)
    return sum(len(g.vertices) for g in geometries), faces


@pytest.mark.parametrize("target", sorted(formats.OUTPUT_FORMATS))
@pytest.mark.parametrize(("names", "points"), LOADABLE, ids=[c[0][0] for c in LOADABLE])
def test_every_promised_pair_converts_and_reloads_alike(names, points, target, tmp_path):
    files = corpus(names)
    if points and target not in formats.POINT_TARGETS:
        with pytest.raises(convert.InvalidMesh, match="point cloud"):
            run(files, target, tmp_path)
        return
    result = run(files, target, tmp_path)
    stats = result.stats
    assert stats["vertices"] > 0 and stats["output_bytes"] == result.path.stat().st_size
    assert stats["converter"] == "trimesh" and stats["output_format"] == target
    back = reload(result, target)
    vertices, faces = counts(back)
    if target == "xyz" or points:
        assert faces == 0 and vertices > 0
    else:
        # STL and friends re-index vertices, so faces and extent are what must survive.
        assert faces == stats["faces"], (faces, stats["faces"])
    bounds = np.asarray(stats["bounds"])
    # GLB and binary PLY/STL store float32: far from the origin they round to ~1e-7 of it.
    atol = max(1e-4, 2e-7 * np.abs(bounds).max())
    assert np.allclose(np.ptp(back.bounds, axis=0), np.ptp(bounds, axis=0), rtol=1e-3, atol=atol)


@pytest.mark.parametrize("name", BROKEN)
def test_broken_corpus_files_fail_clearly(name, tmp_path):
    with pytest.raises(convert.InvalidMesh, match="no geometry"):
        run(corpus([name]), "glb", tmp_path)


def test_textures_survive_into_glb(tmp_path):
    result = run(corpus(["Duck.glb"]), "glb", tmp_path)
    back = trimesh.load(result.path, file_type="glb")
    geometry = next(iter(back.geometry.values()))
    assert getattr(geometry.visual.material, "baseColorTexture", None) is not None


def write(tmp_path: Path, name: str, data: bytes) -> list[tuple[str, Path]]:
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    return [(name, path)]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.obj", b"", "empty"),
        ("blank.stl", b"   \n", "empty"),
        ("noise.stl", os.urandom(4096), "STL|stl|geometry"),
        ("noise.ply", os.urandom(4096), "no 'ply' header"),
        ("noise.glb", os.urandom(4096), "not binary glTF"),
        ("noise.3mf", os.urandom(4096), "not a 3MF"),
        ("noise.off", b"\x00" + os.urandom(4096), "binary data"),
    ],
)
def test_garbage_fails_as_invalid_mesh(name, data, reason, tmp_path):
    with pytest.raises(convert.InvalidMesh, match=reason):
        run(write(tmp_path, name, data), "glb", tmp_path)


@pytest.mark.parametrize("name", ["20mm-xyz-cube.stl", "Duck.glb", "P_XPM_0331_01.3mf"])
def test_truncated_file_fails_as_invalid_mesh(name, tmp_path):
    data = (CORPUS / name).read_bytes()
    with pytest.raises(convert.InvalidMesh):
        run(write(tmp_path, name, data[: len(data) // 3]), "glb", tmp_path)


def test_extension_that_lies_is_named(tmp_path):
    glb = (CORPUS / "Duck.glb").read_bytes()
    with pytest.raises(convert.InvalidMesh, match=r"rename it \.glb"):
        run(write(tmp_path, "duck.obj", glb), "stl", tmp_path)


def test_unsupported_input_is_refused_before_loading(tmp_path):
    with pytest.raises(errors.InvalidRequest, match="No supported mesh"):
        run(write(tmp_path, "model.fbx", b"Kaydara FBX Binary"), "glb", tmp_path)


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_zip_upload_with_sidecars_converts(tmp_path):
    archive = zipped({n: (CORPUS / n).read_bytes() for n in ("TestScene.gltf", "TestScene.bin")})
    result = run(write(tmp_path, "scene.zip", archive), "glb", tmp_path)
    direct = run(corpus(["TestScene.gltf", "TestScene.bin"]), "glb", tmp_path / "direct")
    assert result.stats["faces"] == direct.stats["faces"] > 1000
    assert result.filename == "TestScene.glb"


def test_zip_bomb_is_refused(tmp_path):
    archive = zipped({"bomb.obj": b"v 0 0 0\n" * 40_000_000})  # 320 MB from ~0.3 MB
    with pytest.raises(convert.InvalidMesh, match="decompression bomb"):
        run(write(tmp_path, "bomb.zip", archive), "glb", tmp_path)


def test_3mf_bomb_is_refused(tmp_path):
    archive = zipped({"3D/3dmodel.model": b"<model>" + b" " * 300_000_000 + b"</model>"})
    with pytest.raises(convert.InvalidMesh, match="decompression bomb"):
        run(write(tmp_path, "bomb.3mf", archive), "glb", tmp_path)


def test_zip_members_cannot_escape_the_work_dir(tmp_path):
    cube = (CORPUS / "cube.OBJ").read_bytes()
    archive = zipped({"../../../../tmp/evil/cube.obj": cube})
    result = run(write(tmp_path, "evil.zip", archive), "stl", tmp_path)
    assert result.path.parent == tmp_path / "out"
    assert not Path("/tmp/evil").exists()


@pytest.mark.parametrize("name", ["../../etc/passwd.obj", "a\x00b.obj", "x" * 500 + ".obj",
                                  "....obj", "C:\\temp\\cube.obj"])
def test_hostile_names_are_harmless(name, tmp_path):
    files = write(tmp_path, name, (CORPUS / "cube.OBJ").read_bytes())
    result = run(files, "glb", tmp_path)
    assert result.path.parent == tmp_path / "out"
    assert "/" not in result.filename and "\x00" not in result.filename
    assert len(result.filename) <= formats.MAX_NAME + 5


def test_a_200k_face_mesh_converts(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=7)  # 327,680 faces
    path = tmp_path / "sphere.obj"
    sphere.export(path)
    result = run([("sphere.obj", path)], "glb", tmp_path)
    assert result.stats["faces"] == len(sphere.faces) >= 200_000


def billion_laughs(root: str) -> bytes:
    entities = '<!ENTITY l0 "lolololololololol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    return (f'<?xml version="1.0"?><!DOCTYPE r [{entities}]>'
            f"{root.replace('BOMB', '&l9;')}").encode()


def test_xml_bomb_in_collada_fails_fast(tmp_path):
    dae = billion_laughs('<COLLADA xmlns="http://www.collada.org/2005/11/COLLADASchema" '
                         'version="1.4.1"><asset><contributor><author>BOMB</author>'
                         "</contributor></asset></COLLADA>")
    with pytest.raises(convert.InvalidMesh, match="could not be read"):
        run(write(tmp_path, "bomb.dae", dae), "glb", tmp_path)


def test_xml_bomb_in_3mf_fails_fast(tmp_path):
    model = billion_laughs('<model xmlns="http://schemas.microsoft.com/3dmanufacturing/core/'
                           '2015/02"><metadata name="x">BOMB</metadata><resources/><build/>'
                           "</model>")
    archive = zipped({"3D/3dmodel.model": model, "[Content_Types].xml": b"<Types/>"})
    with pytest.raises(convert.InvalidMesh):
        run(write(tmp_path, "bomb.3mf", archive), "glb", tmp_path)


def test_our_own_outputs_convert_again(tmp_path):
    """Embedded-buffer glTF and binary PLY, as we write them, are inputs too."""
    gltf = run(corpus(["Duck.glb"]), "gltf", tmp_path / "a")
    again = run([(gltf.filename, gltf.path)], "glb", tmp_path / "b")
    assert again.stats["faces"] == gltf.stats["faces"] == 4212
    ply = run(corpus(["bunny.ply"]), "ply", tmp_path / "c")
    assert not ply.path.read_bytes()[:200].count(b"ascii")  # binary
    stl = run([(ply.filename, ply.path)], "stl", tmp_path / "d")
    assert stl.stats["faces"] == 16301


def glb(document: dict, binary: bytes) -> bytes:
    import json
    import struct

    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\x00" * (-len(binary) % 4)
    chunks = (struct.pack("<I4s", len(text), b"JSON") + text
              + struct.pack("<I4s", len(binary), b"BIN\x00") + binary)
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def test_glb_declaring_a_billion_vertices_fails_without_allocating_them(tmp_path):
    document = {
        "asset": {"version": "2.0"},
        "buffers": [{"byteLength": 36}],
        "bufferViews": [{"buffer": 0, "byteLength": 36}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 1_000_000_000,
                       "type": "VEC3"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "nodes": [{"mesh": 0}], "scenes": [{"nodes": [0]}], "scene": 0,
    }
    with pytest.raises(convert.InvalidMesh):
        run(write(tmp_path, "bomb.glb", glb(document, bytes(36))), "stl", tmp_path)
