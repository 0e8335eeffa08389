"""CT files in and out, always in RAS world coordinates; the checked reading of every ITK image file.

CT volumes are read with SimpleITK (NIfTI, NRRD, MHA/MHD, a DICOM series
folder) and always land in RAS world coordinates: ITK reports geometry in
LPS, so ``ijk -> RAS = diag(-1, -1, 1) @ [direction * spacing | origin]``,
whatever the file's direction matrix (oblique included). Input files are only
ever read.

`read_image_file` (also used for X-rays) refuses with `InputError` what ITK
reads silently wrong: NIfTI files cut short (zero-filled) or with NaN/inf
voxels (made 0 by its NIfTI library), non-finite, zero or negative spacing
(taken as 1 mm), non-finite or singular geometry, too many voxels. What ITK
prints on stderr meanwhile is held back (`quiet_reading`) for the message.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import struct
import sys
import tempfile
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..limits import MAX_VOLUME_VOXELS, VOXEL_SPACING_RANGE_MM, check_number
from .ct import Volume, check_values
from .hu import HUToMu

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

_RECOPY = "the file is damaged or was cut short (an interrupted copy or download?): copy or export it again"


def _as_path(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"the {what} path must be a file name (str or Path), got {type(path).__name__}")
    return Path(path)


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("reading medical image files needs SimpleITK: pip install SimpleITK") from exc
    return sitk


@contextlib.contextmanager
def quiet_reading(itk_warnings: bool = False):
    """Hold back ITK (unless ``itk_warnings``: then captured), numpy and Python warnings and what C++ libraries print
    on stderr; yields an object whose ``text`` (set on exit) is what was printed."""
    sitk = _sitk()
    captured = types.SimpleNamespace(text="")
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(itk_warnings)
    saved, sink = None, tempfile.TemporaryFile()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no file descriptor 2 (some GUI hosts): nothing to redirect
        pass
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        captured.text = sink.read().decode(errors="replace")
        sink.close()
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _itk_reason(exc: Exception, printed: str) -> str:
    """The useful sentence of an ITK exception, with what its libraries printed meanwhile."""
    both = f"{exc}\n{printed}"
    short = re.search(r"ideal = (\d+) : actual = (\d+)", both)
    if short or re.search(r"data not read completely|fread got only|expected \d+ bytes but", both):
        held = f": it holds {short.group(2)} of the {short.group(1)} bytes its header announces" if short else ""
        return f"the image data is incomplete{held}; {_RECOPY}"
    if "Unable to determine ImageIO" in both:
        return "SimpleITK cannot read this kind of file (NIfTI-2?): save it as NIfTI-1 (.nii/.nii.gz), NRRD or MHA"
    if re.search(r"determinant|orthonormal|Bad direction", both):
        return "its direction (orientation) matrix is singular or not a rotation; fix the file's orientation"
    lines = [s.strip() for s in str(exc).splitlines() if s.strip() and not s.startswith("Exception thrown")]
    text = " ".join(re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", s) for s in lines if not s.startswith("/"))
    return text or str(exc).strip()


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # the NIfTI datatypes whose NaN/inf voxels nifticlib makes 0


def _nifti_header(path: Path) -> dict | None:
    """The fields of a NIfTI-1/2 header (gzip or not) DiffReg checks; ``None`` when it is no NIfTI header."""
    try:
        with path.open("rb") as f:
            packed = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if packed else path.open("rb")) as f:
            raw = f.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path} cannot be decompressed ({exc}); {_RECOPY}") from None
    for e in "<>":
        size = struct.unpack(e + "i", raw[:4])[0] if len(raw) >= 4 else 0
        if size == 348 and len(raw) >= 348 and raw[344:347] in (b"n+1", b"ni1"):
            field = {"datatype": (70, "2h"), "dim": (40, "8h"), "pixdim": (76, "8f"), "offset": (108, "3f"),
                     "codes": (252, "2h"), "quat": (256, "6f"), "srow": (280, "12f")}
        elif size == 540 and len(raw) >= 540 and raw[4:7] in (b"n+2", b"ni2"):
            field = {"datatype": (12, "2h"), "dim": (16, "8q"), "pixdim": (104, "8d"), "offset": (168, "q2d"),
                     "codes": (344, "2i"), "quat": (352, "6d"), "srow": (400, "12d")}
        else:
            continue
        (datatype, bitpix), dim, pixdim, (offset, slope, inter), codes, quat, srow = (
            struct.unpack_from(e + fmt, raw, at) for at, fmt in field.values())
        single = b"+" in (raw[345:346] if size == 348 else raw[5:6])
        n = dim[0]
        whole = 1 <= n <= 7 and all(d >= 1 for d in dim[1:n + 1]) and bitpix > 0 and bitpix % 8 == 0
        need = int(np.prod([int(d) for d in dim[1:n + 1]], dtype=object)) * (bitpix // 8) if whole else None
        return {"endian": e, "datatype": datatype, "bitpix": bitpix, "dim": dim, "pixdim": pixdim, "need": need,
                "offset": max(int(offset) if np.isfinite(offset) else 0, size + 4), "slope": slope, "inter": inter,
                "qform": codes[0], "sform": codes[1], "quatern": quat, "srow": srow, "gzip": packed, "single": single}
    return None


def _check_nifti(path: Path, h: dict) -> None:
    """Refuse a NIfTI header with unusable geometry or scaling, or a file that holds less data than it announces."""
    n = h["dim"][0]
    if not 1 <= n <= 7 or min(h["dim"][1:n + 1], default=0) < 1:
        raise InputError(f"{path}: NIfTI header dim {list(h['dim'])} gives no image; {_RECOPY}")
    for axis, value in zip("ijk", h["pixdim"][1:min(n, 3) + 1]):
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{path}: NIfTI voxel spacing pixdim along {axis} is {value:g} mm; a spacing must be a "
                             "positive number: fix the file's header")
    for code, name, values in ((h["qform"], "qform (quatern_b/c/d, qoffset)", h["quatern"]),
                               (h["sform"], "sform (srow_x/y/z)", h["srow"])):
        if code > 0 and not np.isfinite(values).all():
            raise InputError(f"{path}: the NIfTI affine {name} holds NaN or infinite numbers; fix the file's geometry")
    if np.isinf(h["slope"]) or np.isinf(h["inter"]):  # NaN means "none" (nibabel writes it); ITK ignores inf
        raise InputError(f"{path}: NIfTI scaling scl_slope {h['slope']:g}, scl_inter {h['inter']:g} is infinite; "
                         "fix the file's header")
    need = h["need"]
    if need is None or not h["single"]:  # an odd pixel size, or the data in a separate .img file: ITK decides
        return
    if not h["gzip"]:
        held = os.path.getsize(path) - h["offset"]
    else:
        with open(path, "rb") as f:  # gzip's last 4 bytes: the uncompressed size mod 2^32
            f.seek(-4, os.SEEK_END)
            if struct.unpack("<I", f.read(4))[0] == (h["offset"] + need) % 2**32:
                return
        held = _nifti_data(path, h, None) - h["offset"]  # another size: count (several gzip members?)
    if held < need:
        raise InputError(f"{path} is truncated: its NIfTI header announces {need} bytes of voxel data (dim "
                         f"{list(h['dim'][1:n + 1])}, {h['bitpix']} bits) but the file holds {max(held, 0)}; {_RECOPY}")


def _file_bytes(path: Path, packed: bool):
    """The bytes of a file in chunks, gunzipped (every gzip member) when ``packed``; a cut-off stream just ends."""
    inflate = zlib.decompressobj(31)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            while packed and chunk:
                try:
                    yield inflate.decompress(chunk)
                except zlib.error as exc:
                    raise InputError(f"{path} cannot be decompressed ({exc}); {_RECOPY}") from None
                chunk, inflate = (inflate.unused_data, zlib.decompressobj(31)) if inflate.eof else (b"", inflate)
                if chunk and not chunk.startswith(b"\x1f\x8b"):  # not another gzip member: trailing bytes
                    return
            if not packed:
                yield chunk


def _nifti_data(path: Path, h: dict, dtype: str | None) -> int:
    """How many bytes the file has (unpacked), or (``dtype`` given) how many voxels of its data are non-finite."""
    seen = bad = 0
    rest = b""
    begin, end = h["offset"], h["offset"] + h["need"]
    for data in _file_bytes(path, h["gzip"]):
        if dtype is not None and seen < end:
            part = rest + data[max(0, begin - seen):max(0, end - seen)]
            usable = len(part) - len(part) % np.dtype(dtype).itemsize
            values = np.frombuffer(part[:usable], dtype=h["endian"] + dtype)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            rest = part[usable:]
        seen += len(data)
    return bad if dtype is not None else seen


def _check_text_header(path: Path) -> None:
    """Refuse an NRRD or MetaImage header whose spacing or geometry is not finite (ITK reads those as 1 mm or 0)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("latin-1")
    if head.startswith("NRRD"):
        lines = head.replace("\r\n", "\n").split("\n\n")[0].splitlines()[1:]
        fields = dict(line.split(": ", 1) for line in lines if ": " in line and not line.startswith("#"))
        kinds = fields.get("kinds", "").split()
        checks = [("spacings", [v], i) for i, v in enumerate(fields.get("spacings", "").split())
                  if i >= len(kinds) or kinds[i] in ("domain", "space", "time")]
        checks += [("space directions", v.split(","), i)
                   for i, v in enumerate(re.findall(r"\(([^)]*)\)", fields.get("space directions", "")))]
        checks += [("space origin", v.split(","), None) for v in re.findall(r"\(([^)]*)\)", fields.get("space origin", ""))]
    elif path.suffix.lower() in (".mha", ".mhd"):
        fields = {k.strip(): v for k, v in (line.split("=", 1) for line in
                                            head.split("ElementDataFile")[0].splitlines() if "=" in line)}
        checks = [(key, fields[key].split(), None) for key in ("Offset", "Origin", "Position", "TransformMatrix",
                                                                "Rotation", "Orientation") if key in fields]
        checks += [("ElementSpacing", [v], i) for i, v in enumerate(fields.get("ElementSpacing", "").split())]
    else:
        return
    for name, texts, axis in checks:
        values = [float(t) if re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", t) else np.nan
                  for t in texts]
        spacing = axis is not None and "spacing" in name.lower()
        if not np.isfinite(values).all() or (spacing and values[0] <= 0) or np.abs(values).max() > 1e150 or \
                (name == "space directions" and not np.linalg.norm(values) > 0):  # ITK: |v| > 1e154 -> 1 mm
            where = f" of axis {axis}" if axis is not None else ""
            need = "a spacing must be a positive number below 1e150" if axis is not None else "it must be finite"
            raise InputError(f"{path}: header field '{name}'{where} is {' '.join(texts).strip()}; {need}: "
                             "fix the file's header")


def _check_geometry(path, spacing, origin, direction, what: str, spacing_range) -> None:
    """Refuse non-finite or singular geometry, and (``spacing_range``) a spacing outside (low, high) mm."""
    spacing, origin = np.asarray(spacing, dtype=np.float64), np.asarray(origin, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).reshape(len(spacing), len(spacing))
    for axis, value in enumerate(spacing):
        try:
            check_number(f"{path}: voxel spacing along axis {axis}", float(value),
                         *(spacing_range or (0.0, None)), low_open=spacing_range is None, unit="mm")
        except InputError as exc:
            raise InputError(f"{exc}; fix the spacing in the {what} file's header") from None
    if not (np.isfinite(origin).all() and np.isfinite(direction).all()):
        raise InputError(f"{path}: the {what}'s origin or direction matrix holds NaN or infinite numbers; "
                         "fix the file's geometry")
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{path}: the {what}'s direction matrix is singular (two voxel axes point the same way); "
                         "fix the file's orientation")


def read_image_file(path: str | os.PathLike, what: str, max_voxels: int, spacing_range=None):
    """Read one ITK image file (NIfTI, NRRD, MHA/MHD) as a SimpleITK image, refusing what would be read wrong.

    ``what`` names the image in messages ("CT", "X-ray"); ``max_voxels`` (all components) is checked on the
    header before the data is read; ``spacing_range`` (low, high) mm bounds every spacing (else: positive).
    """
    sitk = _sitk()
    path = _as_path(path, what)
    with np.errstate(all="ignore"):  # headers of 1e300 overflow in the checks' norms: refused, not warned about
        _check_text_header(path)
        nifti = _nifti_header(path)
        if nifti is not None:
            _check_nifti(path, nifti)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    error = image = None
    with quiet_reading() as printed:
        try:
            reader.ReadImageInformation()
            voxels = int(np.prod(reader.GetSize(), dtype=object)) * reader.GetNumberOfComponents()
            if voxels <= max_voxels:
                _check_geometry(path, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), what,
                                spacing_range)
                image = reader.Execute()
        except RuntimeError as exc:
            error = exc
    if error is not None:
        raise InputError(f"could not read {what} {path}: {_itk_reason(error, printed.text)}") from error
    if image is None:
        raise InputError(f"{path}: the {what} has {voxels} voxels, more than the {max_voxels} DiffReg reads; "
                         "crop or downsample it first")
    if nifti is not None:
        _check_nifti_values(path, nifti, sitk.GetArrayViewFromImage(image), what)
    return image


def _check_nifti_values(path: Path, h: dict, array: np.ndarray, what: str) -> None:
    """nifticlib makes NaN/inf voxels 0 (then scl_slope/scl_inter apply): look in the file where ITK read those."""
    if array.dtype.kind == "f" and np.isfinite(h["slope"]) and h["slope"] != 0 and not np.isfinite(array).all():
        raise InputError(f"{path}: the file's scaling (scl_slope {h['slope']:g}, scl_inter {h['inter']:g}) takes "
                         "the values beyond float32's range (~3.4e38); fix the scaling in the header")
    if h["single"] and h["need"] and h["datatype"] in _NIFTI_FLOATS and \
            any(bool((array == v).any()) for v in {0.0, float(np.float32(h["inter"]))} if np.isfinite(v)):
        bad = _nifti_data(path, h, _NIFTI_FLOATS[h["datatype"]])
        if bad:
            raise InputError(f"{path}: the {what} has {bad} NaN or infinite value(s) in the file; fill or fix them first")


def sitk_affine_ras(image) -> np.ndarray:
    """ijk -> RAS 4x4 matrix of a SimpleITK image (3D)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def _read_series(sitk, path: Path):
    """The one DICOM series in a folder; refused when a DICOM file in it is unreadable or slices are missing."""
    reader = sitk.ImageSeriesReader()
    error = image = None
    with quiet_reading(itk_warnings=True) as printed:  # ITK warns (only) of missing or unevenly spaced slices
        try:
            series = reader.GetGDCMSeriesIDs(str(path))
            if len(series) == 1:
                files = reader.GetGDCMSeriesFileNames(str(path), series[0])
                reader.SetFileNames(files)
                image = reader.Execute()
        except RuntimeError as exc:
            error = exc
    if error is not None:
        raise InputError(f"could not read the CT series in {path}: {_itk_reason(error, printed.text)}") from error
    if not series:
        raise InputError(f"no DICOM series found in folder {path}")
    if len(series) > 1:
        raise InputError(f"folder {path} holds {len(series)} DICOM series ({', '.join(series)}); "
                         "point --ct at a folder with one series")
    used = {Path(f).name for f in files}
    for f in sorted(path.iterdir()):  # GDCM leaves out the files it cannot parse (a cut-off slice) without a word
        if f.name not in used and f.name.upper() != "DICOMDIR" and f.is_file() and _is_dicom(f):
            raise InputError(f"{f}: a DICOM file of the CT folder {path} cannot be read; {_RECOPY}")
    uneven = re.search(r"maximum nonuniformity:\s*([0-9.eE+-]+)", printed.text)
    if uneven and float(uneven.group(1)) > 0.1 * image.GetSpacing()[2]:
        raise InputError(f"the CT series in {path} has missing or unevenly spaced slices (positions up to "
                         f"{float(uneven.group(1)):.3g} mm off a regular grid); export the complete series again")
    _check_geometry(path, image.GetSpacing(), image.GetOrigin(), image.GetDirection(), "CT", VOXEL_SPACING_RANGE_MM)
    return image


def read_ct_array(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CT file or DICOM series folder -> (values (K, J, I) float32, ijk->RAS affine (4, 4)).

    `InputError` for what `read_image_file` refuses (spacing outside `limits.VOXEL_SPACING_RANGE_MM`,
    over `limits.MAX_VOLUME_VOXELS` voxels, ...), for images not 3D or with more than one value per voxel.
    """
    sitk = _sitk()
    path = _as_path(path, "CT")
    if not path.exists():
        raise InputError(f"CT file or folder not found: {path}")
    if path.is_dir():
        image = _read_series(sitk, path)
    else:
        image = read_image_file(path, "CT", MAX_VOLUME_VOXELS, VOXEL_SPACING_RANGE_MM)
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}D image; a CT must be a 3D volume "
                         "(a 2D image is an X-ray, not a CT)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a CT has one")
    if image.GetNumberOfPixels() > MAX_VOLUME_VOXELS:  # a DICOM series (a file's header was checked before)
        raise InputError(f"{path}: the CT has {image.GetNumberOfPixels()} voxels, more than the {MAX_VOLUME_VOXELS} "
                         "DiffReg reads; crop or downsample it first")
    raw = sitk.GetArrayViewFromImage(image)
    check_values(raw, f"{path}: the CT")
    return raw.astype(np.float32), sitk_affine_ras(image)


def read_volume(path: str | os.PathLike, hu_to_mu: HUToMu | None = None, labels: str | os.PathLike | None = None,
                dtype: torch.dtype = torch.float32) -> Volume:
    """Read a CT in HU into a `Volume` (mu in 1/mm, RAS), with an optional label map on the same grid."""
    hu, affine = read_ct_array(path)
    label_array = None
    if labels is not None:
        label_array, label_affine = read_ct_array(labels)
        if label_array.shape != hu.shape or not np.allclose(label_affine, affine, atol=1e-3):
            raise InputError(f"label volume {labels} is not on the CT's voxel grid (shape {label_array.shape} vs "
                             f"{hu.shape}); resample it onto the CT first")
        label_array = torch.from_numpy(np.rint(label_array).astype(np.int64))
    return Volume.from_hu(torch.from_numpy(hu), torch.from_numpy(affine), hu_to_mu, label_array, dtype)


def write_volume(path: str | os.PathLike, values: np.ndarray, affine_ras: np.ndarray) -> None:
    """Write a (K, J, I) array with an ijk->RAS affine to NIfTI/NRRD/MHA (axis-aligned or oblique)."""
    sitk = _sitk()
    lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.asarray(values))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing[None, :]).reshape(-1).tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))
