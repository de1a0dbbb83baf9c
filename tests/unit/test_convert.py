"""The trimesh conversion on real corpus files and on hostile input. No database."""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from trimesh.exchange.obj import export_obj

from service import errors
from service.domain import formats
from workers import convert

# Real models carried by the repository (sources and licences in tests/corpus/NOTICE).
CORPUS = Path(__file__).resolve().parents[1] / "corpus"

# One upload each, from tests/corpus (see its NOTICE): every model that loads, sidecars included.
MESHES = [
    ["20mm-xyz-cube.stl"], ["Duck.glb"], ["P_XPM_0331_01.3mf"], ["TestScene.gltf", "TestScene.bin"],
    ["ballA.off"], ["bunny.ply"], ["busted.STL"], ["comments.off"], ["cube.OBJ"],
    ["cube_invalid_shininess.dae"], ["multibody.stl"], ["notenoughindices.obj"],
    ["rabbit.obj", "rabbit.mtl"],
]
POINT_CLOUDS = [["obj_points.obj"], ["points_ascii.ply"], ["points_cloudcompare.xyz"]]
BROKEN = ["empty.obj", "empty.stl"]

KEEP_VERTICES = {"glb", "gltf", "ply", "off", "xyz"}
"""Targets that write the loaded vertices one for one; OBJ drops unreferenced ones and STL
repeats each vertex for every face it belongs to."""


def corpus(*names: str) -> list[tuple[str, Path]]:
    # A missing corpus must fail the run, not skip it: these tests are the format promise.
    assert CORPUS.is_dir(), f"the mesh corpus is missing at {CORPUS}"
    return [(name, CORPUS / name) for name in names]


def run(files: list[tuple[str, Path]], target: str, work: Path) -> convert.ConversionResult:
    return convert.convert(files, target, {}, work / "out")


def upload(work: Path, name: str, data: bytes) -> list[tuple[str, Path]]:
    """One uploaded file, stored under a harmless name the way the worker stores it."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "upload.bin"
    path.write_bytes(data)
    return [(name, path)]


def uploads(work: Path, files: dict[str, bytes]) -> list[tuple[str, Path]]:
    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(files.values()):
        (folder / str(index)).write_bytes(data)
    return [(name, folder / str(index)) for index, name in enumerate(files)]


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def placed(loaded) -> list:
    if isinstance(loaded, trimesh.Scene):
        return [loaded.geometry[loaded.graph[n][1]] for n in loaded.graph.nodes_geometry]
    return [loaded]


def counts(loaded) -> tuple[int, int]:
    """Vertices and faces as placed (a scene may place a mesh more than once)."""
    geometries = placed(loaded)
    faces = sum(len(g.faces) for g in geometries if getattr(g, "faces", None) is not None)
    return sum(len(g.vertices) for g in geometries), faces


def reload(result: convert.ConversionResult):
    return trimesh.load(result.path, file_type=result.stats["output_format"], process=False)


# --- every promised (input, output) pair ------------------------------------------------


@pytest.mark.parametrize("target", sorted(formats.OUTPUT_FORMATS))
@pytest.mark.parametrize("names", MESHES, ids=[n[0] for n in MESHES])
def test_every_mesh_converts_to_every_target_and_reloads_alike(names, target, tmp_path):
    result = run(corpus(*names), target, tmp_path)
    stats = result.stats
    vertices, faces = counts(reload(result))
    if target == "xyz":
        assert (vertices, faces) == (stats["vertices"], 0)
    else:
        assert faces == stats["faces"] > 0
    if target in KEEP_VERTICES:
        assert vertices == stats["vertices"]
    elif target == "stl":
        assert vertices == 3 * faces
    else:
        assert 0 < vertices <= stats["vertices"]
    assert_same_extent(reload(result), stats["bounds"])


@pytest.mark.parametrize("target", sorted(formats.POINT_TARGETS))
@pytest.mark.parametrize("names", POINT_CLOUDS, ids=[n[0] for n in POINT_CLOUDS])
def test_point_clouds_convert_to_targets_that_hold_points(names, target, tmp_path):
    result = run(corpus(*names), target, tmp_path)
    assert result.stats["is_point_cloud"] and result.stats["faces"] == 0
    assert counts(reload(result)) == (result.stats["vertices"], 0)
    assert_same_extent(reload(result), result.stats["bounds"])


@pytest.mark.parametrize("target", sorted(formats.OUTPUT_FORMATS - formats.POINT_TARGETS))
@pytest.mark.parametrize("names", POINT_CLOUDS, ids=[n[0] for n in POINT_CLOUDS])
def test_point_clouds_to_surface_only_targets_fail_with_the_reason(names, target, tmp_path):
    with pytest.raises(convert.UnsupportedConversion,
                       match=rf"point cloud .*{target.upper()} holds only surfaces.*ply"):
        run(corpus(*names), target, tmp_path)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def assert_same_extent(loaded, bounds: list[list[float]]) -> None:
    expected = np.asarray(bounds)
    # GLB and binary PLY/STL store float32: far from the origin they round to ~1e-7 of it.
    atol = max(1e-4, 2e-7 * np.abs(expected).max())
    assert np.allclose(loaded.bounds, expected, rtol=1e-5, atol=atol)


def test_the_result_records_what_was_converted(tmp_path):
    result = run(corpus("rabbit.obj", "rabbit.mtl"), "glb", tmp_path)
    stats = result.stats
    assert (stats["input_format"], stats["output_format"]) == ("obj", "glb")
    assert (stats["vertices"], stats["faces"], stats["geometries"]) == (732, 1252, 1)
    assert np.asarray(stats["bounds"]).shape == (2, 3)
    assert stats["input_bytes"] == sum((CORPUS / n).stat().st_size
                                       for n in ("rabbit.obj", "rabbit.mtl"))
    assert stats["output_bytes"] == result.path.stat().st_size > 0
    assert stats["converter"] == "trimesh" and stats["converter_version"] == trimesh.__version__
    assert 0 <= stats["convert_seconds"] < 30
    assert stats["missing_files"] == [] and not stats["merged"]
    json.dumps(stats)  # it is stored as JSON


def test_progress_moves_through_the_stages(tmp_path):
    seen: list[tuple[int, str]] = []
    convert.convert(corpus("bunny.ply"), "glb", {}, tmp_path, lambda p, s: seen.append((p, s)))
    assert [stage for _, stage in seen] == ["loading", "converting", "exporting", "exported"]
    assert [p for p, _ in seen] == sorted(p for p, _ in seen) and seen[-1][0] == 100


@pytest.mark.parametrize("name", BROKEN)
def test_broken_corpus_files_fail_clearly(name, tmp_path):
    with pytest.raises(convert.InvalidMesh, match=f"{name} holds no geometry"):
        run(corpus(name), "glb", tmp_path)


# --- scenes, materials, multi-file uploads ----------------------------------------------


def test_a_multi_body_file_stays_a_scene_in_glb(tmp_path):
    result = run(corpus("multibody.stl"), "glb", tmp_path)
    assert len(reload(result).geometry) == result.stats["geometries"] == 2


def test_a_multi_body_file_is_merged_for_a_single_mesh_target(tmp_path):
    result = run(corpus("multibody.stl"), "ply", tmp_path)
    back = reload(result)
    assert isinstance(back, trimesh.Trimesh) and len(back.faces) == 32
    assert result.stats["merged"]


def test_a_scene_keeps_its_placement_when_merged(tmp_path):
    scene = run(corpus("TestScene.gltf", "TestScene.bin"), "glb", tmp_path / "a")
    merged = run(corpus("TestScene.gltf", "TestScene.bin"), "off", tmp_path / "b")
    assert np.allclose(reload(merged).bounds, reload(scene).bounds, atol=1e-4)


def test_textures_survive_into_glb(tmp_path):
    result = run(corpus("Duck.glb"), "glb", tmp_path)
    assert texture_of(reload(result)) is not None


def texture_of(scene: trimesh.Scene):
    material = next(iter(scene.geometry.values())).visual.material
    return getattr(material, "baseColorTexture", None)


def textured_obj() -> dict[str, bytes]:
    """The duck as OBJ + MTL + PNG, the way a user would upload it."""
    duck = trimesh.load(CORPUS / "Duck.glb").to_geometry()
    text, files = export_obj(duck, return_texture=True, mtl_name="duck.mtl")
    return {"duck.obj": text.encode(), **files}


def test_obj_with_mtl_and_texture_keeps_the_texture_in_glb(tmp_path):
    files = textured_obj()
    assert {"duck.mtl", "blinn3-fx.png"} <= set(files)
    result = run(uploads(tmp_path, files), "glb", tmp_path)
    assert texture_of(reload(result)).size == (512, 512)


def test_obj_material_colour_survives_into_glb(tmp_path):
    result = run(corpus("rabbit.obj", "rabbit.mtl"), "glb", tmp_path)
    material = next(iter(reload(result).geometry.values())).visual.material
    assert list(material.baseColorFactor[:3]) == [255, 0, 255]  # rabbit.mtl: Kd 1 0 1


def test_obj_without_its_mtl_converts_and_says_what_was_missing(tmp_path):
    result = run(corpus("rabbit.obj"), "glb", tmp_path)
    assert result.stats["faces"] == 1252 and result.stats["missing_files"] == ["rabbit.mtl"]


def test_obj_output_names_no_material_file_it_cannot_include(tmp_path):
    result = run(uploads(tmp_path, textured_obj()), "obj", tmp_path)
    text = result.path.read_text()
    assert "mtllib" not in text and "\nvt " in text  # UVs stay


def test_gltf_without_its_bin_fails_naming_the_missing_file(tmp_path):
    with pytest.raises(convert.InvalidMesh, match=r"TestScene\.bin is referenced but was not"):
        run(corpus("TestScene.gltf"), "glb", tmp_path)


def test_sidecars_are_never_read_from_the_filesystem(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 4096)
    document = {"asset": {"version": "2.0"}, "buffers": [
        {"uri": str(tmp_path / "secret.bin"), "byteLength": 4096}]}
    files = upload(tmp_path / "up", "scene.gltf", json.dumps(document).encode())
    with pytest.raises(convert.InvalidMesh, match=r"secret\.bin is referenced but was not"):
        run(files, "glb", tmp_path)


def test_zip_upload_with_sidecars_converts(tmp_path):
    archive = zipped({f"scene/{n}": (CORPUS / n).read_bytes()
                      for n in ("TestScene.gltf", "TestScene.bin")}
                     | {"__MACOSX/scene/._TestScene.gltf": b"\x00\x05\x16\x07"})
    result = run(upload(tmp_path, "scene.zip", archive), "glb", tmp_path)
    direct = run(corpus("TestScene.gltf", "TestScene.bin"), "glb", tmp_path / "direct")
    assert result.stats["faces"] == direct.stats["faces"] > 1000
    assert result.filename == "TestScene.glb"


def test_zip_upload_of_a_textured_obj_keeps_the_texture(tmp_path):
    archive = zipped({f"duck/{name}": data for name, data in textured_obj().items()})
    result = run(upload(tmp_path, "DUCK.ZIP", archive), "glb", tmp_path)
    assert texture_of(reload(result)) is not None


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"readme.txt": b"hello"}, "No supported mesh"),
        ({"a.obj": b"v 0 0 0", "b.stl": b"solid x"}, "Several models"),
        ({"inner.zip": zipped({"cube.obj": b"v 0 0 0"})}, "another ZIP"),
        ({"a/cube.obj": b"v 0 0 0", "b/CUBE.obj": b"v 0 0 0"}, "two files named"),
        ({"../../../../tmp/evil/cube.obj": b"v 0 0 0"}, "outside the archive"),
        ({"/etc/cube.obj": b"v 0 0 0"}, "outside the archive"),
        ({"C:\\cube.obj": b"v 0 0 0"}, "outside the archive"),
    ],
)
def test_zip_uploads_that_cannot_be_meant_are_refused(members, reason, tmp_path):
    with pytest.raises(convert.InvalidMesh, match=reason):
        run(upload(tmp_path, "upload.zip", zipped(members)), "glb", tmp_path)


def test_zip_with_other_files_is_refused(tmp_path):
    files = uploads(tmp_path, {"model.zip": zipped({"cube.obj": b"v 0 0 0"}), "a.png": b"png"})
    with pytest.raises(convert.InvalidMesh, match="upload a ZIP on its own"):
        run(files, "glb", tmp_path)


def test_random_bytes_named_zip_fail_clearly(tmp_path):
    with pytest.raises(convert.InvalidMesh, match="is not a readable ZIP archive"):
        run(upload(tmp_path, "x.zip", b"PK\x03\x04" + os.urandom(2000)), "glb", tmp_path)


# --- bombs --------------------------------------------------------------------------------


def zeros_zip(name: str, size: int, extra: dict[str, bytes] | None = None) -> bytes:
    """A few kilobytes that claim `size` bytes: zeros deflate about 1000 to 1."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as member:
            for _ in range(size // 1_000_000):
                member.write(bytes(1_000_000))
        for member_name, data in (extra or {}).items():
            zf.writestr(member_name, data)
    return buffer.getvalue()


def test_zip_bomb_is_refused_by_compression_ratio(tmp_path):
    archive = zeros_zip("bomb.obj", 50_000_000)
    assert len(archive) < 100_000
    with pytest.raises(convert.InvalidMesh, match="decompression bomb"):
        run(upload(tmp_path, "bomb.zip", archive), "glb", tmp_path)


def test_zip_bomb_is_refused_by_total_size(tmp_path, monkeypatch):
    # The real limit is 500 MB; a lower one keeps the test's own archive small.
    monkeypatch.setattr(convert, "MAX_UNPACKED_BYTES", 1_000_000)
    archive = zipped({"cube.obj": (CORPUS / "cube.OBJ").read_bytes() * 3000})
    with pytest.raises(convert.InvalidMesh, match="decompression bomb"):
        run(upload(tmp_path, "big.zip", archive), "glb", tmp_path)


def test_zip_with_too_many_members_is_refused(tmp_path):
    archive = zipped({f"{i}.png": b"" for i in range(convert.MAX_ARCHIVE_MEMBERS + 1)})
    with pytest.raises(convert.InvalidMesh, match=r"holds \d+ files"):
        run(upload(tmp_path, "many.zip", archive), "glb", tmp_path)


def test_3mf_bomb_is_refused(tmp_path):
    archive = zeros_zip("3D/3dmodel.model", 50_000_000)
    with pytest.raises(convert.InvalidMesh, match="decompression bomb"):
        run(upload(tmp_path, "bomb.3mf", archive), "glb", tmp_path)


def billion_laughs(root: str) -> bytes:
    entities = '<!ENTITY l0 "lolololololololol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    return (f'<?xml version="1.0"?><!DOCTYPE r [{entities}]>'
            f"{root.replace('BOMB', '&l9;')}").encode()


COLLADA = ('<COLLADA xmlns="http://www.collada.org/2005/11/COLLADASchema" version="1.4.1">'
           "<asset><contributor><author>BOMB</author></contributor></asset></COLLADA>")
MODEL_3MF = ('<model xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02">'
             '<metadata name="x">BOMB</metadata><resources/><build/></model>')


def test_xml_bomb_in_collada_fails_fast(tmp_path):
    started = time.monotonic()
    with pytest.raises(convert.InvalidMesh, match="XML bomb"):
        run(upload(tmp_path, "bomb.dae", billion_laughs(COLLADA)), "glb", tmp_path)
    assert time.monotonic() - started < 2


def test_xml_bomb_in_3mf_fails_fast(tmp_path):
    archive = zipped({"3D/3dmodel.model": billion_laughs(MODEL_3MF),
                      "[Content_Types].xml": b"<Types/>"})
    with pytest.raises(convert.InvalidMesh, match="XML bomb"):
        run(upload(tmp_path, "bomb.3mf", archive), "glb", tmp_path)


def test_collada_cannot_pull_in_local_files(tmp_path):
    dae = ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           + COLLADA.replace("BOMB", "&x;")).encode()
    with pytest.raises(convert.InvalidMesh, match="DTD or XML entities"):
        run(upload(tmp_path, "xxe.dae", dae), "glb", tmp_path)


def glb(document: dict, binary: bytes) -> bytes:
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
    with pytest.raises(convert.InvalidMesh, match="could not be read as binary glTF"):
        run(upload(tmp_path, "bomb.glb", glb(document, bytes(36))), "stl", tmp_path)


# --- bad bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.obj", b"", "is empty"),
        ("blank.stl", b"   \n\t", "is empty"),
        ("noise.stl", os.urandom(4096), "STL|truncated"),
        ("noise.ply", os.urandom(4096), "is not PLY"),
        ("noise.glb", os.urandom(4096), r"is not binary glTF"),
        ("noise.gltf", os.urandom(4096), "is not glTF JSON|binary data"),
        ("noise.3mf", os.urandom(4096), "is not 3MF"),
        ("noise.dae", os.urandom(4096), "is not COLLADA|binary data"),
        ("noise.off", b"\x00" + os.urandom(4096), "binary data"),
        ("noise.obj", b"\x00" + os.urandom(4096), "binary data"),
        ("noise.xyz", b"\x00" + os.urandom(4096), "binary data"),
        ("nul.obj", b"v 0 0 0\x00\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "binary data"),
        ("words.obj", b"hello world\n" * 20, "holds no geometry"),
        ("nan.obj", b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "not finite"),
        ("index.ply", b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
         b"property float y\nproperty float z\nelement face 1\n"
         b"property list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n"
         b"3 0 1 -7\n", "refer to vertices it does not have"),
        ("index.off", b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 99\n", "could not be read as OFF"),
        ("short.off", b"OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n",
         "header declares 4 vertices and 2 faces, but 4 and 1 were read"),
    ],
)
def test_bad_bytes_fail_as_invalid_mesh(name, data, reason, tmp_path):
    with pytest.raises(convert.InvalidMesh, match=reason):
        run(upload(tmp_path, name, data), "glb", tmp_path)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("20mm-xyz-cube.stl", "truncated: its header promises 260 triangles"),
        ("Duck.glb", "truncated: its header says"),
        ("P_XPM_0331_01.3mf", "damaged 3MF"),
        ("bunny.ply", "header declares 8,171 vertices and 16,301 faces"),
        ("ballA.off", "could not be read as OFF"),
        ("TestScene.gltf", "not valid glTF JSON"),
        ("cube_invalid_shininess.dae", "could not be read as COLLADA"),
        ("multibody.stl", "holds no geometry"),
    ],
)
def test_truncated_files_fail_as_invalid_mesh(name, reason, tmp_path):
    data = (CORPUS / name).read_bytes()
    cut = data.rindex(b"\n", 0, len(data) // 3) + 1  # at a line end: text parsers go on happily
    with pytest.raises(convert.InvalidMesh, match=reason):
        run(upload(tmp_path, name, data[:cut]), "glb", tmp_path)


@pytest.mark.parametrize(
    ("source", "name", "reason"),
    [
        ("Duck.glb", "duck.obj", r"named \.obj but holds binary glTF \(GLB\): rename it \.glb"),
        ("Duck.glb", "duck.gltf", r"rename it \.glb"),
        ("bunny.ply", "bunny.stl", r"named \.stl but holds PLY: rename it \.ply"),
        ("ballA.off", "ball.obj", r"holds OFF: rename it \.off"),
        ("20mm-xyz-cube.stl", "cube.ply", r"holds STL: rename it \.stl"),
        ("TestScene.gltf", "scene.obj", r"holds glTF JSON: rename it \.gltf"),
        ("cube_invalid_shininess.dae", "cube.gltf", r"holds COLLADA \(DAE\): rename it \.dae"),
        ("P_XPM_0331_01.3mf", "model.stl", "is a ZIP archive"),
        ("cube.OBJ", "cube.stl", "text that is not STL"),
        ("cube.OBJ", "cube.glb", "is not binary glTF"),
        ("cube.OBJ", "cube.3mf", "is not 3MF"),
    ],
)
def test_an_extension_that_lies_is_named(source, name, reason, tmp_path):
    with pytest.raises(convert.InvalidMesh, match=reason):
        run(upload(tmp_path, name, (CORPUS / source).read_bytes()), "glb", tmp_path)


def test_an_unsupported_input_format_fails_listing_the_supported_ones(tmp_path):
    with pytest.raises(convert.InvalidMesh, match=r"No supported mesh.*3mf, dae, glb"):
        run(upload(tmp_path, "model.fbx", b"Kaydara FBX Binary"), "glb", tmp_path)


def test_an_unsupported_target_fails_listing_the_supported_ones(tmp_path):
    with pytest.raises(convert.UnsupportedConversion, match="choose one of glb, gltf"):
        run(corpus("cube.OBJ"), "fbx", tmp_path)


def test_errors_are_permanent_job_errors():
    assert issubclass(convert.InvalidMesh, errors.PermanentJobError)
    assert issubclass(convert.UnsupportedConversion, errors.PermanentJobError)
    assert not convert.InvalidMesh("x").retryable


# --- hostile names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "output"),
    [
        ("../../etc/passwd.obj", "passwd.glb"),
        ("a\x00b.obj", "ab.glb"),
        ("x" * 500 + ".obj", "x" * 116 + ".glb"),
        ("....obj", "upload.glb"),  # the name the upload was stored under
        (".obj", "upload.glb"),
        ("C:\\temp\\cube.OBJ", "cube.glb"),
        ("\x1b[31mred\x1b[0m.obj", "31mred_0m.glb"),
        ("ch\u00e4ir \u202egnp.obj", "chair gnp.glb"),
        ('"quoted"; x=1.obj', "quoted_ x_1.glb"),
    ],
)
def test_hostile_names_give_a_safe_output_in_the_work_dir(name, output, tmp_path):
    result = run(upload(tmp_path, name, (CORPUS / "cube.OBJ").read_bytes()), "glb", tmp_path)
    assert result.filename == output
    assert result.path == tmp_path / "out" / output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "upload.bin"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "....", "", "x" * 500, "\x00"])
def test_hostile_names_without_a_model_extension_are_refused(name, tmp_path):
    with pytest.raises(convert.InvalidMesh, match="No supported mesh"):
        run(upload(tmp_path, name, (CORPUS / "cube.OBJ").read_bytes()), "glb", tmp_path)


@pytest.mark.parametrize(
    ("original", "fmt", "expected"),
    [
        ("chair.obj", "glb", "chair.glb"),
        ("cube.OBJ", "stl", "cube.stl"),
        ("", "glb", "output.glb"),
        ("....", "ply", "output.ply"),
        ("../../etc/passwd", "glb", "passwd.glb"),
        ("a\x00b\n.obj", "glb", "ab.glb"),
        ("x" * 500, "obj", "x" * 116 + ".obj"),
        ("/", "off", "output.off"),
    ],
)
def test_output_filename(original, fmt, expected):
    assert formats.output_filename(original, fmt) == expected


# --- formats ------------------------------------------------------------------------------


def test_formats_cover_the_promise():
    assert {"obj", "stl", "ply", "off", "glb", "gltf", "dae", "3mf", "xyz"} <= formats.INPUT_FORMATS
    assert {"glb", "gltf", "obj", "stl", "ply", "off"} <= formats.OUTPUT_FORMATS
    assert formats.SCENE_TARGETS | formats.SINGLE_MESH_TARGETS == formats.OUTPUT_FORMATS
    assert not formats.SCENE_TARGETS & formats.SINGLE_MESH_TARGETS
    assert formats.POINT_TARGETS <= formats.OUTPUT_FORMATS
    assert all(formats.content_type(f) != "application/octet-stream"
               for f in formats.OUTPUT_FORMATS)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["cube.OBJ"], (0, "obj")),
        (["rabbit.mtl", "rabbit.obj"], (1, "obj")),
        (["TestScene.bin", "TestScene.GLTF", "tex.JPEG"], (1, "gltf")),
        (["models.Zip"], (0, "zip")),
    ],
)
def test_pick_main_finds_the_model_by_extension(names, expected):
    assert formats.pick_main(names) == expected


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (["model.fbx"], "No supported mesh.*3mf, dae, glb, gltf, obj, off, ply, stl, xyz"),
        (["a.obj", "b.obj"], "Several models"),
        (["m.zip", "a.png"], "upload a ZIP on its own"),
        ([], "none"),
    ],
)
def test_pick_main_refuses_what_it_cannot_choose(names, reason):
    with pytest.raises(errors.InvalidRequest, match=reason) as caught:
        formats.pick_main(names)
    assert [f.field for f in caught.value.fields] == ["file"]


def test_check_target_lists_the_outputs():
    assert formats.check_target(" .GLB ") == "glb"
    with pytest.raises(errors.InvalidRequest, match="glb, gltf, obj, off, ply, stl, xyz"):
        formats.check_target("fbx")


# --- our own outputs, and size ------------------------------------------------------------


def test_our_own_outputs_convert_again(tmp_path):
    """Embedded-buffer glTF and binary PLY, as we write them, are inputs too."""
    gltf = run(corpus("Duck.glb"), "gltf", tmp_path / "a")
    again = run([(gltf.filename, gltf.path)], "glb", tmp_path / "b")
    assert again.stats["faces"] == gltf.stats["faces"] == 4212
    ply = run(corpus("bunny.ply"), "ply", tmp_path / "c")
    assert b"binary_little_endian" in ply.path.read_bytes()[:200]
    stl = run([(ply.filename, ply.path)], "stl", tmp_path / "d")
    assert stl.stats["faces"] == 16301


def test_a_200k_face_mesh_converts_obj_to_glb_quickly(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=7)  # 327,680 faces
    path = tmp_path / "sphere.obj"
    sphere.export(path)
    started = time.monotonic()
    result = run([("sphere.obj", path)], "glb", tmp_path)
    elapsed = time.monotonic() - started
    assert result.stats["faces"] == len(sphere.faces) >= 200_000
    assert counts(reload(result)) == (len(sphere.vertices), len(sphere.faces))
    assert elapsed < 10, f"OBJ→GLB of {len(sphere.faces):,} faces took {elapsed:.2f} s"
