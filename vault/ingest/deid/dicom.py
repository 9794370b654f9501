"""DICOM for researchers: the PS3.15 Basic Application Level Confidentiality Profile, applied
with pydicom (the one module that imports it).

pydicom reads and writes DICOM but ships no de-identification profile. This module applies
Table E.1-1 (``vault.ingest.deid.profile``) to every attribute present, at every depth of every
sequence, and then:

- Compound actions are resolved towards IOD conformance without looking the IOD up: ``X/Z/U*``
  keeps the sequence and cleans its items (their instance UIDs are replaced); an action offering
  ``D`` gets a dummy value; otherwise one offering ``Z`` gets an empty value. A dummy or empty
  value carries nothing, so conformance is kept at no cost to confidentiality.
- Private attributes (odd groups), curves (50xx) and overlays (60xx, whole groups) are removed,
  and so are group lengths, which would be stale. Content Sequence is removed (only images are
  served, PS3.15 E.1.1 note 13).
- Beyond the table (PS3.15 E.1.1 note 1 leaves the rest to the de-identifier): every person
  name (VR PN) is emptied, and every UID (VR UI) that is not a UID registered in the standard
  (SOP classes, transfer syntaxes, coding schemes) is replaced.
- UIDs are replaced consistently: one original UID gets one new UID everywhere in the file
  (``2.25.`` and a UUID derived from the record id and the order in which the UIDs are met, so
  the same stored file always gives the same bytes and nothing is derived from the original UID).
- Patient Identity Removed is set to ``YES``, De-identification Method and its code sequence
  (DCM 113100) name the profile; the File Meta Information is rebuilt and the 128-byte
  preamble zeroed (PS3.15 E.1.1, items 6 and 7).
- Encapsulated JPEG and JPEG-LS frames go through ``JpegDeidentifier`` (their APP segments can
  hold the camera's EXIF); RLE and native pixel data are copied unchanged.

Refused (``not_deidentifiable``): a file without the ``DICM`` prefix, objects without pixel data
(reports, presentation states, encapsulated documents), Burned In Annotation ``YES`` (the Basic
Profile does not clean pixels), and transfer syntaxes whose streams are not checked (JPEG 2000,
HTJ2K, MPEG, HEVC). The file is held in memory (at most ``MAX_DICOM`` bytes) while pydicom
parses and rewrites it, on a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from typing import Any

import pydicom
from pydicom import config as dicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.utils import get_expected_length
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
    ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, RLELossless,
)

from vault.errors import NotDeidentifiable
from vault.ingest.deid.failures import Malformed, TooLargeToDeidentify, UnsupportedFormat
from vault.ingest.deid.jpeg import JpegDeidentifier
from vault.ingest.deid.profile import BASIC_PROFILE
from vault.ingest.deid.source import RangeSource

# Validation warnings quote the offending value, which may be a patient's name: not wanted in
# logs or on stderr. Values are replaced here anyway, so pydicom need not judge them.
dicom_config.settings.reading_validation_mode = dicom_config.IGNORE
dicom_config.settings.writing_validation_mode = dicom_config.IGNORE

MAX_DICOM = 256 << 20
NATIVE_SYNTAXES = frozenset({
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
})
JPEG_SYNTAXES = frozenset({
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
})
ALLOWED_SYNTAXES = NATIVE_SYNTAXES | JPEG_SYNTAXES | {RLELossless}
PIXEL_DATA = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
CONTENT_SEQUENCE = 0x0040A730
BURNED_IN_ANNOTATION = 0x00280301
UID_DOMAIN = b"imagevault/v1/dicom-uid\x00"
IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:imagevault:deidentifier").int)
IMPLEMENTATION_VERSION = "IMAGEVAULT1"
METHOD = "imagevault: DICOM PS3.15 Basic Application Level Confidentiality Profile"
DUMMY_TEXT = "ANONYMIZED"
DUMMIES: dict[str, Any] = {
    "DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D", "DS": "0", "IS": "0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0,
    "OB": b"\x00\x00", "OW": b"\x00\x00", "OD": b"\x00" * 8, "OF": b"\x00" * 4, "OL": b"\x00" * 4,
    "OV": b"\x00" * 8, "UN": b"\x00\x00", "AT": 0,
}


class _Uids:
    """One new UID per original UID, derived from the record (``salt``) and the order in which
    UIDs are first met: consistent within the file, identical for every download of it."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt
        self._map: dict[str, str] = {}

    def replace(self, original: str) -> str:
        original = str(original).strip("\x00 ")
        if not original:
            return original
        new = self._map.get(original)
        if new is None:
            digest = hashlib.sha256(UID_DOMAIN + self._salt + b"\x00" + str(len(self._map)).encode()).digest()
            new = "2.25." + str(uuid.UUID(bytes=digest[:16], version=4).int)
            self._map[original] = new
        return new

    def replace_unregistered(self, original: str) -> str:
        """A registered UID (a SOP class, a transfer syntax...) says nothing about the patient."""
        return original if UID(str(original).strip("\x00 ")).keyword else self.replace(original)


def _values(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None or value == "":
        return []
    return list(value) if elem.VM > 1 else [value]


def _map_uids(elem: DataElement, change: Any) -> None:
    values = [change(v) for v in _values(elem)]
    if values:
        elem.value = values if len(values) > 1 else values[0]


def _choice(action: str) -> str:
    if action == "X/Z/U*":
        return "U"
    if "D" in action:
        return "D"
    if "Z" in action:
        return "Z"
    return action  # X or U


def _clean(ds: Dataset, uids: _Uids) -> None:
    for elem in list(ds):
        tag = elem.tag
        group = tag.group
        if tag.is_private or tag.element == 0 or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del ds[tag]
            continue
        if int(tag) == CONTENT_SEQUENCE:
            del ds[tag]
            continue
        action = BASIC_PROFILE.get(int(tag))
        if action is None:
            if elem.VR == "SQ":
                _clean_items(elem, uids)
            elif elem.VR == "PN":
                elem.value = elem.empty_value
            elif elem.VR == "UI":
                _map_uids(elem, uids.replace_unregistered)
            continue
        choice = _choice(action)
        if choice == "X":
            del ds[tag]
        elif choice == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value
        elif elem.VR == "SQ":  # D or U on a sequence: keep it, clean every item
            _clean_items(elem, uids)
        elif elem.VR == "UI" or choice == "U":
            _map_uids(elem, uids.replace)
        else:  # D
            elem.value = DUMMIES.get(elem.VR, DUMMY_TEXT)


def _clean_items(elem: DataElement, uids: _Uids) -> None:
    for item in elem.value or ():
        _clean(item, uids)


def _clean_frames(ds: Dataset) -> None:
    """Encapsulated JPEG/JPEG-LS frames without their APP and COM segments."""
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    cleaned = []
    changed = False
    for frame in frames:
        deidentifier = JpegDeidentifier()
        out = deidentifier.feed(frame) + deidentifier.finish()
        changed |= out != frame.rstrip(b"\x00")  # a frame's even-length padding is no change
        cleaned.append(out)
    if changed:
        ds.PixelData = encapsulate(cleaned, has_bot=True)


def deidentify_dicom(data: bytes, salt: bytes) -> bytes:
    """The de-identified Part 10 file (blocking: run it on a worker thread)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise Malformed()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax not in ALLOWED_SYNTAXES:
            raise UnsupportedFormat("this DICOM transfer syntax cannot be de-identified")
        if not any(tag in ds for tag in PIXEL_DATA):
            raise UnsupportedFormat("only DICOM images can be de-identified for research")
        if str(ds.get(BURNED_IN_ANNOTATION, DataElement(0, "CS", "")).value).upper() == "YES":
            raise UnsupportedFormat("this DICOM image has burned-in annotation")
        # pydicom reads a value cut short by the end of the file without complaint; native pixel
        # data shorter than its description is a truncated file (encapsulated frames without
        # their EOI are caught by the frame check below).
        if syntax in NATIVE_SYNTAXES and "PixelData" in ds and len(ds.PixelData) < get_expected_length(ds, "bytes"):
            raise Malformed()
        original_instance = str(ds.get("SOPInstanceUID", "") or ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
        uids = _Uids(salt)
        _clean(ds, uids)
        if syntax in JPEG_SYNTAXES and "PixelData" in ds:
            _clean_frames(ds)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID", ""))
        meta.MediaStorageSOPInstanceUID = uids.replace(original_instance)
        meta.TransferSyntaxUID = syntax
        meta.ImplementationClassUID = IMPLEMENTATION_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta
        ds.preamble = bytes(128)
        out = io.BytesIO()
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()
    except NotDeidentifiable:
        raise
    except Exception as exc:  # pydicom's parse and write errors, whatever their type
        raise Malformed() from exc


async def dicom_bytes(source: RangeSource, salt: bytes) -> bytes:
    if source.size > MAX_DICOM:
        raise TooLargeToDeidentify()
    data = await source.read(0, source.size)
    return await asyncio.get_running_loop().run_in_executor(None, deidentify_dicom, data, salt)
