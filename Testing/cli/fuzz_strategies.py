"""Hypothesis strategies of bad (and some good) inputs for the ``diffreg`` fuzz suite (`test_fuzz.py`).

Every strategy stays tiny, so that an input the tool accepts is cheap to run:
detectors of at most 32 x 32 pixels, CTs of at most 6 voxels a side, a few
registration iterations. Valid values that are merely expensive (a
16384 x 16384 detector, 100 000 iterations) are left out on purpose: they are
the user's choice of cost, not bad input. Invalid values are drawn from the
whole range (NaN, infinities, integers beyond float range, strings, ...).

File contents are returned as bytes (`write_*` helpers turn arrays into CT
files); the tests write them into a fresh folder per example.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
from hypothesis import strategies as st

NASTY_NUMBERS = (0, -0.0, 1, -1, 0.5, 1e-300, 5e-324, -1e-300, 1e300, -1e300, 1.7976931348623157e308,
                 math.nan, math.inf, -math.inf, 2**31, 2**53 + 1, 2**63, 2**64, 2**70, -2**70, 10**400, -10**400)
"""Numbers that break naive code: signed zeros, subnormals, huge, non-finite, beyond float and int64 range."""

numbers = st.one_of(
    st.sampled_from(NASTY_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-2**80, max_value=2**80),
    st.floats(min_value=-1e4, max_value=1e4),
)
"""Any JSON number, finite or not (``json.dumps`` writes NaN and Infinity, which ``json.loads`` reads back)."""

_text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, _text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=16,
)
"""Any JSON value, nested a few levels."""


def _mutated(valid: dict, valid_values: dict) -> st.SearchStrategy[dict]:
    """``valid`` with fresh valid values, except for up to two keys replaced by a random number or value, or removed."""

    @st.composite
    def build(draw):
        broken = draw(st.lists(st.sampled_from(sorted(valid)), max_size=2, unique=True))
        data = {}
        for key, value in valid.items():
            how = draw(st.sampled_from(("number", "number", "json", "drop"))) if key in broken else "valid"
            if how == "valid":
                data[key] = draw(valid_values.get(key, st.just(value)))
            elif how == "number":
                data[key] = draw(numbers)
            elif how == "json":
                data[key] = draw(json_values)
        if draw(st.integers(0, 5)) == 0:
            data.update(draw(st.dictionaries(_text, json_values, max_size=2)))
        return data

    return build()


# ---------------------------------------------------------------------------------------------- geometry JSON

VALID_GEOMETRY = {"source_to_detector_mm": 1000.0, "rows": 16, "cols": 16, "pixel_spacing_mm": [4.0, 4.0],
                  "principal_point_px": [7.5, 7.5]}
"""A 16 x 16 detector of 4 mm pixels at 1 m: it sees all of the 12^3 CT of 10 mm voxels the tests use."""

geometry_values = {
    "source_to_detector_mm": st.floats(1.0, 100_000.0),
    "rows": st.integers(1, 32),  # 33..16384 are valid but cost more than a fuzz example may
    "cols": st.integers(1, 32),
    "pixel_spacing_mm": st.one_of(st.floats(1e-4, 100.0), st.lists(st.floats(1e-4, 100.0), min_size=2, max_size=2)),
    "principal_point_px": st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2),
}
_number_pairs = st.one_of(st.lists(numbers, min_size=2, max_size=2), st.lists(numbers, max_size=3))
geometry_data = st.one_of(
    _mutated(VALID_GEOMETRY, geometry_values),
    _mutated(VALID_GEOMETRY, geometry_values),
    _mutated(VALID_GEOMETRY, {**geometry_values, "pixel_spacing_mm": _number_pairs,
                              "principal_point_px": _number_pairs}),
    json_values,
)
"""A geometry JSON value: mostly a valid detector with up to two fields broken, sometimes any JSON value."""

# ---------------------------------------------------------------------------------------------------- pose JSON


def _rotation(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _matrix(rotation: np.ndarray, translation) -> list[list[float]]:
    return [[*map(float, rotation[i]), float(translation[i])] for i in range(3)] + [[0.0, 0.0, 0.0, 1.0]]


@st.composite
def rigid_matrices(draw, max_translation: float = 1000.0) -> list[list[float]]:
    """A random rigid 4 x 4 ``camera_from_world`` (unit quaternion rotation, translation in mm)."""
    q = draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 1e-3))
    t = draw(st.lists(st.floats(-max_translation, max_translation), min_size=3, max_size=3))
    return _matrix(_rotation(q), t)


@st.composite
def near_matrices(draw, base: list[list[float]], max_angle: float = 0.3, max_translation: float = 50.0):
    """``base`` moved by a small rigid motion (rotation of up to ~2 x ``max_angle`` rad, translation in mm)."""
    q = [1.0] + draw(st.lists(st.floats(-max_angle, max_angle), min_size=3, max_size=3))
    t = np.array(base)[:3, 3] + draw(st.lists(st.floats(-max_translation, max_translation), min_size=3, max_size=3))
    return _matrix(_rotation(q) @ np.array(base)[:3, :3], t)


def _times(value, factor):
    try:
        return value * factor
    except OverflowError:  # a float times an integer beyond float range
        return factor


@st.composite
def broken_matrices(draw, base: list[list[float]]):
    """``base`` broken one way: an entry replaced, a row lost or added, scaled, mirrored, transposed, noisy."""
    m = [list(row) for row in draw(st.one_of(st.just(base), rigid_matrices()))]
    how = draw(st.sampled_from(("entry", "entry", "json_entry", "row", "extra_row", "scale", "mirror", "noise",
                                "translation", "flat", "3x4")))
    if how in ("entry", "json_entry"):
        i, j = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        m[i][j] = draw(numbers if how == "entry" else json_values)
    elif how == "row":
        del m[draw(st.integers(0, 3))]
    elif how == "extra_row":
        m.append([0.0, 0.0, 0.0, 1.0])
    elif how == "scale":
        factor = draw(numbers)
        m = [[_times(v, factor) for v in row[:3]] + row[3:] for row in m[:3]] + m[3:]
    elif how == "mirror":
        m[0] = [-v for v in m[0][:3]] + m[0][3:]
    elif how == "noise":
        eps = draw(st.sampled_from((1e-12, 1e-9, 1e-6, 1e-4, 1e-2)))
        m = [[v + eps * ((i * 4 + j) % 3 - 1) for j, v in enumerate(row)] for i, row in enumerate(m)]
    elif how == "translation":
        m[draw(st.integers(0, 2))][3] = draw(st.sampled_from((1e5, 1e6, 1e6 + 1, 1e7, 1e300, 1e308, 10**400)))
    elif how == "flat":
        m = [v for row in m for v in row]
    elif how == "3x4":
        m = m[:3]
    return m


VALID_POSE_MATRIX = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 500.0], [0.0, 0.0, 0.0, 1.0]]
"""Looks along +A (anterior) at the origin from 500 mm; the tests' CT is centred on the origin."""

pose_data = st.one_of(
    st.fixed_dictionaries({"camera_from_world": rigid_matrices()}),
    st.fixed_dictionaries({"camera_from_world": near_matrices(VALID_POSE_MATRIX)}),
    st.fixed_dictionaries({"camera_from_world": broken_matrices(VALID_POSE_MATRIX)}),
    st.fixed_dictionaries({"camera_from_world": broken_matrices(VALID_POSE_MATRIX)},
                          optional={"extra": json_values}),
    st.fixed_dictionaries({"camera_from_world": json_values}),
    json_values,
)
"""A pose JSON value: valid rigid poses (some facing the tests' CT), broken ones, any JSON value."""

# ----------------------------------------------------------------------------------------- JSON files as bytes

_DEEP = (31, 32, 33, 1000, 100_000)


@st.composite
def json_file_bytes(draw, data: st.SearchStrategy, valid: dict) -> bytes:
    """The bytes of a JSON file: valid-looking JSON, other encodings, truncated, deep, huge, or random bytes."""
    how = draw(st.sampled_from(("json", "json", "json", "bytes", "encoding", "truncated", "deep", "huge",
                                "long_int", "literal")))
    text = json.dumps(draw(data)) if how in ("json", "encoding", "truncated") else json.dumps(valid)
    if how == "json":
        return text.encode()
    if how == "bytes":
        return draw(st.binary(max_size=64))
    if how == "encoding":
        text = text.replace('"', '"\u00e9', 1) if draw(st.booleans()) else text
        codec = draw(st.sampled_from(("utf-16", "utf-16-le", "utf-32", "latin-1", "utf-8-sig", "cp1252")))
        return text.encode(codec, errors="replace")
    if how == "truncated":
        data_bytes = text.encode()
        return data_bytes[:draw(st.integers(0, max(0, len(data_bytes) - 1)))]
    if how == "deep":
        depth = draw(st.sampled_from(_DEEP))
        opener, closer = draw(st.sampled_from((("[", "]"), ('{"a":', "}"))))
        return (opener * depth + "1" + closer * depth).encode()
    if how == "huge":  # just over the 1 MB cap, or a valid file padded to it
        return (text + " " * (1_000_001 - len(text) + draw(st.integers(-2, 2)))).encode()
    key = draw(st.sampled_from(sorted(valid)))  # one value replaced by a number Python's json reads specially
    if how == "long_int":  # beyond float range; beyond 4300 digits Python refuses to parse it at all
        number = "9" * draw(st.sampled_from((309, 4300, 5000)))
    else:  # literals Python's json reads that are not JSON
        number = draw(st.sampled_from(("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999")))
    return json.dumps({**valid, key: "@number@"}).replace('"@number@"', number).encode()


# ------------------------------------------------------------------------------------------ numeric flag values

FLAG_WORDS = ("nan", "NaN", "inf", "-inf", "+inf", "infinity", "1e400", "-1e400", "1e-400", "0", "-0", "1e300",
              "1e-300", "5e-324", "1e308", "", " ", "abc", "1,5", "0x10", "1_000", "\u0661", "\u00b2", "1e", "--",
              "-", "None", "True", " 3 ", "3.", ".5", "-.5", "2**70", str(2**70), str(-2**70), str(10**400),
              "1" * 5000)
"""Strings a user (or a script) may pass as a number."""

flag_values = st.one_of(
    st.sampled_from(FLAG_WORDS),
    st.sampled_from(FLAG_WORDS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.integers(min_value=-10, max_value=100).map(str),
    st.floats(min_value=-10, max_value=100).map(lambda v: f"{v:g}"),
    st.floats(min_value=-10, max_value=100).map(lambda v: f"{v:g}"),
    _text,
)
"""One command line value for a numeric flag."""


def _as_int(text: str):
    try:
        return int(text)
    except (ValueError, OverflowError):
        return None


def cheap(flag: str, text: str) -> bool:
    """False for valid values of ``flag`` that only cost time (many iterations, many starts)."""
    expensive = {"--iterations": 4, "--n-starts": 4, "--energy-bins": 64}
    value = _as_int(text)
    return not (flag in expensive and value is not None and value > expensive[flag])


RENDER_FLAGS = ("--step-voxels", "--max-memory-mb", "--noise-photons", "--blur-mm", "--scatter-fraction",
                "--scatter-sigma-mm", "--heel", "--noise-seed", "--kvp", "--filtration-mm-al", "--energy-bins",
                "--mu-water", "--bone-hu", "--mu-bone", "--air-max-hu", "--bone-min-hu", "--soft-width-hu")
REGISTER_FLAGS = ("--step-voxels", "--max-memory-mb", "--levels", "--iterations", "--n-starts", "--seed",
                  "--frame", "--mu-water", "--bone-hu", "--mu-bone", "--crop")


@st.composite
def flag_settings(draw, flags: tuple[str, ...]) -> list[str]:
    """One to three of ``flags``, each ``--flag=VALUE`` (``--levels`` sometimes with two values)."""
    chosen = draw(st.lists(st.sampled_from(flags), min_size=1, max_size=3, unique=True))
    argv = []
    for flag in chosen:
        values = flag_values.filter(lambda text, flag=flag: cheap(flag, text))
        if flag == "--crop":
            values = st.one_of(values, st.lists(flag_values, min_size=4, max_size=4).map(",".join))
        if flag == "--levels" and draw(st.booleans()):
            argv += [flag, *draw(st.lists(values, min_size=2, max_size=2))]
        else:
            argv.append(f"{flag}={draw(values)}")
    return argv


_numbers = st.one_of(flag_values, st.floats(-720, 720).map(lambda v: f"{v:g}"), st.floats(-720, 720).map(str))


@st.composite
def pose_flags(draw) -> list[str]:
    """``--clinical A B`` or ``--spherical T P G BX BY BZ`` with distances and an isocentre, each maybe bad."""
    if draw(st.booleans()):
        argv = ["--clinical", *draw(st.lists(_numbers, min_size=2, max_size=2))]
    else:
        argv = ["--spherical", *draw(st.lists(_numbers, min_size=6, max_size=6))]
        if draw(st.integers(0, 4)):
            argv.append(f"--sdd={draw(st.one_of(flag_values, st.floats(1, 3000).map(str)))}")
    if draw(st.integers(0, 4)) or argv[0] == "--clinical":
        argv.append(f"--source-to-isocenter={draw(st.one_of(flag_values, st.floats(1, 3000).map(str)))}")
    if draw(st.booleans()):
        argv += ["--isocenter", *draw(st.lists(_numbers, min_size=3, max_size=3))]
    return argv


# ------------------------------------------------------------------------------------------------ arrays

DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "int64", "uint64", "float16", "float32", "float64",
          "complex64", "complex128", "object", "<U3")
VALUE_KINDS = ("random", "random", "constant", "zeros", "nan", "inf", "huge", "tiny", "negative")


@st.composite
def arrays(draw, shapes: st.SearchStrategy, dtypes=DTYPES, kinds=VALUE_KINDS) -> np.ndarray:
    """A small array of any of ``dtypes`` with random, constant, NaN, infinite, 1e300 ... values."""
    shape = draw(shapes)
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(kinds))
    size = int(np.prod(shape))
    seed = draw(st.integers(0, 2**16))
    values = np.random.default_rng(seed).uniform(-1000, 2000, size).reshape(shape)
    if kind == "constant":
        values = np.full(shape, draw(st.sampled_from((1.0, -1000.0, 3.0))))
    elif kind == "zeros":
        values = np.zeros(shape)
    elif kind in ("nan", "inf") and size:
        flat = values.reshape(-1)
        share = draw(st.sampled_from((1, size)))  # one voxel, or all of them
        flat[:share] = math.nan if kind == "nan" else draw(st.sampled_from((math.inf, -math.inf)))
    elif kind == "huge":
        values = values * 1e300
    elif kind == "tiny":
        values = values * 1e-310
    elif kind == "negative":
        values = -np.abs(values) - 1.0
    if dtype == "object":
        return values.astype(object)
    if dtype == "<U3":
        return values.astype("<U3")
    with np.errstate(all="ignore"):
        return values.astype(dtype)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a .npy file (object arrays are pickled, as ``np.save`` does)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


valid_xrays = arrays(st.just((16, 16)), ("float32", "float64", "uint16", "int16"), ("random",))
"""X-rays the tests' register accepts (random values on the 16 x 16 detector)."""
xray_shapes = st.one_of(
    st.just((16, 16)), st.just((16, 16)), st.just((16, 16)),
    st.just(()), st.tuples(st.integers(0, 20)),
    st.tuples(st.integers(0, 20), st.integers(0, 20)),
    st.sampled_from(((1, 16, 16), (2, 16, 16), (16, 16, 1), (16, 16, 3), (16, 16, 4), (0, 16, 16), (1, 1, 1, 16, 16))),
)
"""X-ray shapes: the 16 x 16 of the tests' geometry, and 0-d, 1-d, 3-d, 5-d, empty and mismatched ones."""

ct_shapes = st.one_of(
    st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(2, 6)),
    st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(2, 6)),
    st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    st.sampled_from(((1, 1, 1), (1, 6, 6), (6, 6, 1), (2, 3, 3, 3))),
)
"""CT shapes (z, y, x as numpy orders them): mostly 3-D of 2..6 voxels a side; 1 voxel a side, 2-D, 4-D."""

CT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
             "complex64")
"""What SimpleITK writes (it refuses bool and float16)."""

_spacing_value = st.one_of(st.floats(1e-4, 1000.0), st.sampled_from((0.0, -1.0, 1e-300, 1e300, math.nan, math.inf)))


@st.composite
def header_geometry(draw) -> dict:
    """Spacing, direction (possibly singular or NaN) and origin for a hand-written NRRD or MHA header."""
    spacing = draw(st.lists(_spacing_value, min_size=3, max_size=3))
    direction = draw(st.sampled_from(("identity", "identity", "singular", "nan", "mirror", "scaled", "random")))
    matrix = np.eye(3)
    if direction == "singular":
        matrix[2] = 0.0
    elif direction == "nan":
        matrix[1, 1] = math.nan
    elif direction == "mirror":
        matrix[0, 0] = -1.0
    elif direction == "scaled":
        matrix = matrix * 2.0
    elif direction == "random":
        matrix = np.array(draw(st.lists(st.floats(-1, 1), min_size=9, max_size=9))).reshape(3, 3)
    origin = draw(st.lists(st.one_of(st.floats(-100, 100), st.sampled_from((1e300, math.nan, -math.inf))),
                           min_size=3, max_size=3))
    return {"spacing": spacing, "direction": matrix.tolist(), "origin": origin}


def nrrd_bytes(array: np.ndarray, geometry: dict, truncate: float = 1.0) -> bytes:
    """A raw NRRD file of a 3-D float32/int16 ``array`` (z, y, x) with any spacing, direction and origin."""
    kind = {"float32": "float", "int16": "short", "float64": "double"}[array.dtype.name]
    d, s, o = np.array(geometry["direction"]), geometry["spacing"], geometry["origin"]
    with np.errstate(all="ignore"):
        vectors = " ".join("(" + ",".join(repr(float(d[r, c] * s[c])) for r in range(3)) + ")"
                           for c in range(3))
    header = (f"NRRD0004\ntype: {kind}\ndimension: 3\nsizes: {' '.join(str(n) for n in array.shape[::-1])}\n"
              f"space: left-posterior-superior\nspace directions: {vectors}\n"
              f"space origin: ({','.join(repr(float(v)) for v in o)})\nencoding: raw\nendian: little\n\n")
    data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return header.encode() + data[:int(len(data) * truncate)]


def mha_bytes(array: np.ndarray, geometry: dict, truncate: float = 1.0) -> bytes:
    """A MetaImage (.mha) file of a 3-D float32/int16 ``array`` with any spacing, direction and origin."""
    kind = {"float32": "MET_FLOAT", "int16": "MET_SHORT", "float64": "MET_DOUBLE"}[array.dtype.name]
    d = np.array(geometry["direction"])
    header = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"TransformMatrix = {' '.join(repr(float(v)) for v in d.T.reshape(-1))}\n"
              f"Offset = {' '.join(repr(float(v)) for v in geometry['origin'])}\n"
              f"ElementSpacing = {' '.join(repr(float(v)) for v in geometry['spacing'])}\n"
              f"DimSize = {' '.join(str(n) for n in array.shape[::-1])}\nElementType = {kind}\n"
              f"ElementDataFile = LOCAL\n")
    data = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return header.encode() + data[:int(len(data) * truncate)]


def write_sitk_ct(path, array: np.ndarray, spacing, vector: bool = False, truncate: float = 1.0) -> None:
    """``array`` written by SimpleITK (format from the suffix) with ``spacing`` where ITK takes it, maybe cut short."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array, isVector=vector and array.ndim >= 3 and array.dtype.kind != "c")
    try:
        image.SetSpacing(spacing[:image.GetDimension()])
    except RuntimeError:  # ITK refuses zero and negative spacing: then the file keeps 1 mm
        pass
    try:
        sitk.WriteImage(image, str(path))
    except RuntimeError:  # a spacing the writer refuses: write the array with the default spacing
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    if truncate < 1.0:
        content = path.read_bytes()
        path.write_bytes(content[:int(len(content) * truncate)])
