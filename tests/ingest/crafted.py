"""Crafted images carrying identifiers in every place a format can hold text, for the
de-identification tests. Every identifier contains ``MARK``, so one search per encoding finds any
that survived; ``IDENTIFIERS`` lists them one by one for a precise failure message.
"""

from __future__ import annotations

import io
import struct
import zlib

import piexif
import pydicom
from PIL import Image, ImageCms, PngImagePlugin, TiffImagePlugin
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from tests.ingest.test_strip import iptc_dataset, photoshop_resource, segment

MARK = "QX9"
IDENTIFIERS: list[str] = []


def ident(place: str) -> str:
    """An identifier for ``place``, registered in IDENTIFIERS."""
    value = f"{MARK}-{place}"
    if value not in IDENTIFIERS:
        IDENTIFIERS.append(value)
    return value


def encodings_of(text: str) -> list[bytes]:
    """How a string can appear in a file: UTF-8 (and Latin-1/ASCII), UTF-16 and UTF-32 of
    either byte order."""
    return [text.encode(e) for e in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")]


def survivors(data: bytes) -> list[str]:
    """The identifiers (or bare marks) still present in ``data``, in any encoding."""
    found = [i for i in IDENTIFIERS if any(form in data for form in encodings_of(i))]
    if not found and any(form in data for form in encodings_of(MARK)):
        found.append(MARK)
    return found


def picture(width: int = 48, height: int = 32) -> Image.Image:
    img = Image.new("RGB", (width, height))
    img.putdata([((x * 7) % 256, (y * 11) % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    return img


def pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size, img.convert("RGB").tobytes()


# EXIF ----------------------------------------------------------------------------------------
def exif_block(prefix: str = "") -> bytes:
    """EXIF with identifiers in IFD0, the Exif IFD (MakerNote included), GPS and a thumbnail."""
    thumb = io.BytesIO()
    picture(8, 8).save(thumb, "JPEG")
    thumbnail = thumb.getvalue()
    thumbnail = thumbnail[:2] + segment(0xFE, ident(prefix + "THUMBNAIL-COMMENT").encode()) + thumbnail[2:]
    return piexif.dump({
        "0th": {
            piexif.ImageIFD.ImageDescription: ident(prefix + "IMAGE-DESCRIPTION").encode(),
            piexif.ImageIFD.Artist: ident(prefix + "ARTIST").encode(),
            piexif.ImageIFD.Copyright: ident(prefix + "COPYRIGHT").encode(),
            piexif.ImageIFD.Software: ident(prefix + "SOFTWARE").encode(),
            piexif.ImageIFD.HostComputer: ident(prefix + "HOST").encode(),
            piexif.ImageIFD.XPAuthor: tuple(ident(prefix + "XP-AUTHOR").encode("utf-16-le") + b"\x00\x00"),
            piexif.ImageIFD.Make: b"DermaCam",
        },
        "Exif": {
            piexif.ExifIFD.UserComment: b"ASCII\x00\x00\x00" + ident(prefix + "USER-COMMENT").encode(),
            piexif.ExifIFD.MakerNote: b"Vendor\x00" + ident(prefix + "MAKERNOTE-SERIAL").encode(),
            piexif.ExifIFD.BodySerialNumber: ident(prefix + "BODY-SERIAL").encode(),
            piexif.ExifIFD.CameraOwnerName: ident(prefix + "CAMERA-OWNER").encode(),
            piexif.ExifIFD.ImageUniqueID: ident(prefix + "UNIQUE-ID").encode(),
            piexif.ExifIFD.DateTimeOriginal: b"2026:11:20 10:15:00",
        },
        "GPS": {
            piexif.GPSIFD.GPSLatitudeRef: b"N",
            piexif.GPSIFD.GPSLatitude: ((51, 1), (30, 1), (2650, 100)),
            piexif.GPSIFD.GPSAreaInformation: b"ASCII\x00\x00\x00" + ident(prefix + "GPS-AREA").encode(),
        },
        "1st": {piexif.ImageIFD.Artist: ident(prefix + "IFD1-ARTIST").encode()},
        "thumbnail": thumbnail,
    })


def xmp_packet(place: str) -> str:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        f'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>{ident(place)}</dc:creator>'
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


# JPEG ----------------------------------------------------------------------------------------
def jpeg_with_identifiers() -> bytes:
    """A progressive JPEG with identifiers in EXIF (all IFDs, MakerNote, thumbnail), IPTC, XMP
    in UTF-8, UTF-16 and UTF-32, extended XMP, COM before and between scans, vendor APPn
    segments, and an MPF-style second image after EOI."""
    out = io.BytesIO()
    picture().save(out, "JPEG", quality=92, progressive=True, exif=exif_block())
    data = out.getvalue()
    xmp_header = b"http://ns.adobe.com/xap/1.0/\x00"
    extension_text = f"<x:ext>{ident('XMP-EXTENDED')}</x:ext>".encode()
    iptc = b"".join(iptc_dataset(2, n, ident(f"IPTC-{n}").encode()) for n in (5, 25, 80, 90, 105, 116, 120))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    extra = (
        segment(0xE1, xmp_header + xmp_packet("XMP-UTF8").encode("utf-8"))
        + segment(0xE1, xmp_header + xmp_packet("XMP-UTF16").encode("utf-16"))
        + segment(0xE1, xmp_header + xmp_packet("XMP-UTF32BE").encode("utf-32-be"))
        + segment(0xE1, b"http://ns.adobe.com/xmp/extension/\x00" + b"A" * 32
                  + struct.pack(">II", len(extension_text), 0) + extension_text)
        + segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + icc)
        + segment(0xE2, b"MPF\x00" + ident("MPF").encode())
        + segment(0xE3, ident("APP3").encode())
        + segment(0xEC, b"Ducky\x00" + ident("APP12-DUCKY").encode())
        + segment(0xED, b"Photoshop 3.0\x00" + photoshop_resource(0x0404, iptc)
                  + photoshop_resource(0x0424, xmp_packet("PHOTOSHOP-XMP").encode()))
        + segment(0xEF, ident("APP15").encode())
        + segment(0xFE, ident("COMMENT").encode())
        + segment(0xFE, ident("COMMENT-UTF16").encode("utf-16-le"))
    )
    app_end = 2
    while data[app_end + 1] in (0xE0, 0xE1):  # after Pillow's APP0 and APP1 (EXIF)
        app_end += 2 + struct.unpack(">H", data[app_end + 2:app_end + 4])[0]
    data = data[:app_end] + extra + data[app_end:]
    # A comment between the first and the second scan of the progressive image.
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    data = data[:second_scan] + segment(0xFE, ident("COMMENT-BETWEEN-SCANS").encode()) + data[second_scan:]
    trailer = io.BytesIO()
    picture(8, 8).save(trailer, "JPEG", exif=piexif.dump({"0th": {piexif.ImageIFD.Artist: ident("AFTER-EOI").encode()}}))
    return data + trailer.getvalue()


# PNG -----------------------------------------------------------------------------------------
def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_identifiers() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", ident("PNG-TEXT"))
    info.add_text("Comment", ident("PNG-ZTXT"), zip=True)
    info.add_itxt("Description", ident("PNG-ITXT") + " é", lang="en", tkey=ident("PNG-ITXT-KEY"))
    info.add_itxt("Title", ident("PNG-ITXT-ZIP"), zip=True)
    info.add_itxt("XML:com.adobe.xmp", xmp_packet("PNG-XMP"), zip=False)
    info.add_text("Raw profile type exif", ident("PNG-RAW-PROFILE"))
    out = io.BytesIO()
    picture().save(out, "PNG", pnginfo=info, exif=exif_block("PNG-"))
    data = out.getvalue()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    head = chunk(b"iCCP", ident("ICC-NAME").encode() + b"\x00\x00" + zlib.compress(icc))
    head += chunk(b"tIME", struct.pack(">HBBBBB", 2026, 11, 20, 10, 15, 0))
    head += chunk(b"prVt", ident("PNG-PRIVATE").encode())
    ihdr_end = 8 + 25
    iend = data.rindex(b"IEND") - 4
    late = chunk(b"tEXt", b"Comment\x00" + ident("PNG-TEXT-AFTER-IDAT").encode())
    return data[:ihdr_end] + head + data[ihdr_end:iend] + late + data[iend:] + ident("PNG-AFTER-IEND").encode()


# WebP ----------------------------------------------------------------------------------------
def riff_chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) & 1)


def webp_with_identifiers(animated: bool = False) -> bytes:
    out = io.BytesIO()
    xmp = xmp_packet("WEBP-XMP").encode()
    if animated:
        frames = [picture(), picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        frames[0].save(out, "WEBP", lossless=True, save_all=True, append_images=frames[1:], duration=100,
                       exif=exif_block("WEBP-"), xmp=xmp)
    else:
        picture().save(out, "WEBP", lossless=True, exif=exif_block("WEBP-"), xmp=xmp)
    data = out.getvalue()
    body = data[12:]
    if animated:  # an unknown chunk inside the first frame, after its image data
        first = body.index(b"ANMF")
        size = struct.unpack("<I", body[first + 4:first + 8])[0]
        extra = riff_chunk(b"QXFR", ident("WEBP-IN-FRAME").encode())
        frame = body[first + 8:first + 8 + size] + extra
        body = body[:first] + riff_chunk(b"ANMF", frame) + body[first + 8 + size + (size & 1):]
    body += riff_chunk(b"QXID", ident("WEBP-UNKNOWN-CHUNK").encode())
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body + ident("WEBP-AFTER-RIFF").encode()


# TIFF ----------------------------------------------------------------------------------------
def tiff_tags(prefix: str, sub_ifds: bool) -> TiffImagePlugin.ImageFileDirectory_v2:
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[269] = ident(prefix + "DOCUMENT-NAME")
    info[270] = ident(prefix + "DESCRIPTION")
    info[285] = ident(prefix + "PAGE-NAME")
    info[305] = ident(prefix + "SOFTWARE")
    info[315] = ident(prefix + "ARTIST")
    info[316] = ident(prefix + "HOST")
    info[33432] = ident(prefix + "COPYRIGHT")
    info[700] = xmp_packet(prefix + "XMP").encode("utf-16")
    info[33723] = iptc_dataset(2, 80, ident(prefix + "IPTC").encode())
    info[34377] = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", 12) + ident(prefix + "PS")[:12].encode().ljust(12, b"_")
    if sub_ifds:
        info[34665] = {0xA430: ident(prefix + "OWNER"), 0xA431: ident(prefix + "BODY-SERIAL"),
                       0x927C: b"Vendor\x00" + ident(prefix + "MAKERNOTE").encode(),
                       0x9286: b"ASCII\x00\x00\x00" + ident(prefix + "USER-COMMENT").encode()}
        info[34853] = {1: "N", 2: (51.0, 30.0, 26.5), 0x1C: b"ASCII\x00\x00\x00" + ident(prefix + "GPS-AREA").encode()}
    return info


def tiff_with_identifiers(compression: str | None = None, big: bool = False) -> bytes:
    """A two-page TIFF. Uncompressed (Pillow's own writer) carries EXIF and GPS IFDs too;
    compressed ones go through libtiff, which writes no sub-IFDs."""
    out = io.BytesIO()
    pages = [picture(), picture(24, 16).transpose(Image.Transpose.ROTATE_180)]
    options: dict[str, object] = {"tiffinfo": tiff_tags("TIFF-", sub_ifds=compression is None)}
    if compression:
        options["compression"] = compression
    if big:
        options["big_tiff"] = True
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:], **options)
    return out.getvalue() + ident("TIFF-AFTER-DATA").encode()


# DICOM ---------------------------------------------------------------------------------------
def _jpeg_frame() -> bytes:
    out = io.BytesIO()
    picture().save(out, "JPEG", quality=95, exif=piexif.dump({"0th": {piexif.ImageIFD.Artist: ident("DICOM-FRAME-EXIF").encode()}}))
    return out.getvalue()


def dicom_with_identifiers(encapsulated: bool = False) -> bytes:
    """A VL Photographic Image with identifiers in patient, study, equipment and private
    attributes, nested sequences, overlays, the file meta and the preamble."""
    image = picture()
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = f"{MARK}^PATIENT-NAME"
    ident("PATIENT-NAME")
    IDENTIFIERS.append(f"{MARK}^PATIENT-NAME")
    ds.PatientID = ident("PATIENT-ID-MRN")
    ds.PatientBirthDate = "19720314"
    ds.PatientSex = "F"
    ds.PatientAddress = ident("PATIENT-ADDRESS")
    ds.OtherPatientIDs = ident("OTHER-PATIENT-ID")
    other = Dataset()
    other.PatientID = ident("OTHER-PATIENT-ID-SEQ")
    other.IssuerOfPatientID = ident("ISSUER")
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.AccessionNumber = ident("ACCESSION")
    ds.StudyID = ident("STUDY-ID")
    ds.StudyDate, ds.StudyTime = "20261120", "101500"
    ds.ContentDate, ds.ContentTime = "20261120", "101500"
    ds.StudyDescription = ident("STUDY-DESCRIPTION")
    ds.SeriesDescription = ident("SERIES-DESCRIPTION")
    ds.ImageComments = ident("IMAGE-COMMENTS")
    ds.InstitutionName = ident("INSTITUTION")
    ds.InstitutionAddress = ident("INSTITUTION-ADDRESS")
    ds.InstitutionalDepartmentName = ident("DEPARTMENT")
    ds.ReferringPhysicianName = f"{MARK}^REFERRER"
    IDENTIFIERS.append(f"{MARK}^REFERRER")
    ds.OperatorsName = f"{MARK}^OPERATOR"
    IDENTIFIERS.append(f"{MARK}^OPERATOR")
    ds.StationName = ident("STATION")
    ds.DeviceSerialNumber = ident("DEVICE-SERIAL")
    ds.Manufacturer = "DermaCam"
    ds.Modality = "XC"
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = ds.SOPClassUID
    referenced.ReferencedSOPInstanceUID = ds.SOPInstanceUID  # the same UID, in a sequence
    referenced.add_new(0x0040A123, "PN", f"{MARK}^PERSON-IN-SEQUENCE")
    IDENTIFIERS.append(f"{MARK}^PERSON-IN-SEQUENCE")
    ds.ReferencedImageSequence = Sequence([referenced])
    ds.add_new(0x00091010, "LO", f"{MARK} CREATOR")  # private creator
    IDENTIFIERS.append(f"{MARK} CREATOR")
    ds.add_new(0x00091001, "LO", ident("PRIVATE-VALUE"))
    ds.add_new(0x60003000, "OW", ident("OVERLAY-DATA").encode().ljust(24, b"_"))
    ds.add_new(0x60004000, "LT", ident("OVERLAY-COMMENTS"))
    ds.Rows, ds.Columns = image.height, image.width
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = generate_uid()
    meta.ImplementationVersionName = ident("IMPL")[:16]
    meta.SourceApplicationEntityTitle = "QX9-AE-TITLE"
    IDENTIFIERS.append("QX9-AE-TITLE")
    if encapsulated:
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate([_jpeg_frame()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = image.tobytes()
    ds.file_meta = meta
    ds.preamble = ident("PREAMBLE").encode().ljust(128, b"\x00")
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()
