"""Photos with GPS (and capture time) EXIF tags written by Pillow, for `manifest --from-exif`'s
test: JPEG, PNG (eXIf chunk) and WebP, north/south and east/west, one without EXIF and one with
EXIF but no GPS. Prints the positions written, in decimal degrees computed from the rationals,
as JSON keyed by the path under OUT.

usage: write_geotagged_photos.py SOURCE_PHOTO OUT
"""
import json, sys, os, shutil
from PIL import Image, ExifTags
from PIL.TiffImagePlugin import IFDRational as R
src = sys.argv[1]; out = sys.argv[2]
os.makedirs(out + "/trip", exist_ok=True)
def exif_with(gps=None, when=None, make=None):
    ex = Image.Exif()
    if make: ex[ExifTags.Base.Make] = make
    if gps:
        (lat_ref, lat), (lon_ref, lon) = gps
        g = ex.get_ifd(ExifTags.IFD.GPSInfo)
        g[ExifTags.GPS.GPSLatitudeRef] = lat_ref
        g[ExifTags.GPS.GPSLatitude] = tuple(R(n, d) for n, d in lat)
        g[ExifTags.GPS.GPSLongitudeRef] = lon_ref
        g[ExifTags.GPS.GPSLongitude] = tuple(R(n, d) for n, d in lon)
    if when:
        e = ex.get_ifd(ExifTags.IFD.Exif)
        e[ExifTags.Base.DateTimeOriginal] = when[0]
        if when[1]: e[ExifTags.Base.OffsetTimeOriginal] = when[1]
    return ex
def deg(parts, ref):
    v = sum(n / d / 60 ** i for i, (n, d) in enumerate(parts))
    return -v if ref in "SW" else v
photos = [
    ("paris.jpg", (("N", [(48, 1), (51, 1), (30132, 1000)]), ("E", [(2, 1), (17, 1), (402, 10)])), ("2024:05:01 14:03:22", "+02:00")),
    ("trip/rio.jpg", (("S", [(22, 1), (54, 1), (135, 10)]), ("W", [(43, 1), (12, 1), (3525, 100)])), None),
    ("trip/tokyo.png", (("N", [(35, 1), (40, 1), (5, 1)]), ("E", [(139, 1), (45, 1), (1, 3)])), ("2023:11:30 08:00:00", None)),
    ("trip/cape-town.webp", (("S", [(33, 1), (55, 1), (0, 1)]), ("E", [(18, 1), (25, 1), (0, 1)])), None),
    ("no-exif.jpg", None, None),
    ("camera-only.jpg", None, None),
]
expected = {}
img = Image.open(src).convert("RGB")
for name, gps, when in photos:
    ex = exif_with(gps, when, make="TestCam" if name == "camera-only.jpg" else None)
    kw = {"exif": ex.tobytes()} if (gps or when or name == "camera-only.jpg") else {}
    img.save(os.path.join(out, name), **kw)
    if gps:
        (lr, la), (nr, lo) = gps
        cap = None
        if when: cap = when[0][:4] + "-" + when[0][5:7] + "-" + when[0][8:10] + "T" + when[0][11:] + (when[1] or "")
        expected[name] = [deg(la, lr), deg(lo, nr), cap]
print(json.dumps(expected))
