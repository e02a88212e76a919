"""Build the bundled negatives sample (src/fruits/sample_data/negatives) from ../shared/datasets.

The quick start (`fruits run` on the bundled sample) trains the class "not a fruit" from these
photos, so that it refuses a milk carton instead of answering "Apple (100% sure)". Only sources
whose licence lets a shipped model use them are read: the Grocery Store Dataset's packages (MIT),
the LatHort orchard tiles (CC BY 4.0), and of the scenes clothing-small (CC0), hands-sign-digits
(Apache-2.0) and tf-flowers (CC BY 2.0). The other scene sources are research-only: never
shipped, used only to measure (`--holdout`).

Whole groups are kept out of the sample so that its effect can be measured honestly on photos of
kinds it never saw: every third grocery product, the apple and pear orchards (cherry tiles ship)
and every research-only scene source. `--holdout DIR` writes symlink folders of every shared
negative that is not shipped, one per measuring set, for `fruits evaluate --negatives`.

    python bench/make_negatives_sample.py                       # rebuild the sample in place
    python bench/make_negatives_sample.py --holdout /tmp/neg-holdout

Deterministic: sorted listings, evenly spaced picks, no randomness; same input, same bytes.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
DEST = ROOT / "src" / "fruits" / "sample_data" / "negatives"
MAX_SIDE = 128  # px; the sample's fruit are 100 px, the CNN sees 224 px either way
QUALITY = 75
EXTS = (".jpg", ".jpeg", ".png")
RESEARCH_ONLY = (  # scenes-negatives-train sources that must never ship (their SOURCE.txt)
    "camvid-street",
    "ccsn-sky",
    "imagenet-sample",
    "people-humanseg",
    "places365-rooms",
    "sroie-receipts",
)


# Per origin: what it is, where from, its licence and the attribution it asks for.
NOTES = {
    "grocery-packages": """Packaged goods (milk, juice, yoghurt, oat drink) on grocery-store
shelves, smartphone photos: the Packages part of the Grocery Store Dataset (Klasson, Zhang,
Kjellstrom, WACV 2019, arXiv:1901.00711), GitHub marcusklasson/GroceryStoreDataset @
fc80ba90f803d79d0383df52c5a4ac5de99ff6fc. Licence: MIT (LICENSE beside this file).
Selection: 2 train_ photos of each of 21 of its 31 products (every third product held out).""",
    "orchard": """Orchard tiles with no fruit (leaves, branches, hail net): CherryBBCH81 by
ai-agriculture-circuits-and-systems (LatHort), GitHub
ai-agriculture-circuits-and-systems/CherryBBCH81 @ 6cd29d71dadd2e0ed8c35f9e73c32597984e47e0,
data/images/ (640x640 tiles with no label).
Licence: CC BY 4.0, https://creativecommons.org/licenses/by/4.0/
Selection: 12 of its 75 no-fruit tiles, evenly spaced.""",
    "clothing-small": """Phone photos of single garments on beds, floors, carpets:
alexeygrigorev/clothing-dataset-small @ 11961516512414bf9f6c150a832cfd21b54a6b54, train/.
Licence: CC0 1.0 Universal (public domain dedication; no attribution required).
Selection: 2 per garment class (10 classes); file names start with the class.""",
    "hands-sign-digits": """Close-ups of one hand showing a sign-language digit on a plain
background: Sign Language Digits Dataset by students of Ayranci Anadolu High School (Mavi 2020,
arXiv:2011.08927), GitHub ardamavi/Sign-Language-Digits-Dataset @
4b09433ef9d5c60602e8805bb54b8aa2428527f8. Licence: Apache License 2.0 (LICENSE beside this file).
Selection: 8 photos; file names are hands__d<digit>_<original name>.""",
    "tf-flowers": """Flickr photos of daisies, dandelions, roses, sunflowers and tulips: the
TensorFlow flower_photos set (via GitHub Oldpel/flower_photos @
140ff6f3beb2173715002984c2bd58dc3506d4c9). Licence: CC BY 2.0,
https://creativecommons.org/licenses/by/2.0/ ; photographers as credited on Flickr: each file
name is <class>__<Flickr photo id>_<secret>, the photo's page is
https://www.flickr.com/photo.gne?id=<Flickr photo id>.
Selection: 2 per flower class.""",
}
CHANGES = f"""Changes: made upright, resized to at most {MAX_SIDE} px a side, re-encoded as JPEG
(quality {QUALITY}) without metadata, renamed <category>__<original name>.jpg, by
bench/make_negatives_sample.py from ../shared/datasets (read there: its SOURCE.txt files)."""


def images(folder: Path, prefix: str = "") -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in EXTS and p.name.startswith(prefix) and p.is_file()
    )


def spaced(items: list[Path], n: int) -> list[Path]:
    """n items evenly spaced through `items` (their centres, so never only the ends)."""
    if n >= len(items):
        return list(items)
    return [items[int((i + 0.5) * len(items) / n)] for i in range(n)]


def plan(shared: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(shipped, held out): origin folder -> source files, measuring set -> source files."""
    ship: dict[str, list[Path]] = {}
    hold: dict[str, list[Path]] = {}
    # Grocery Store Dataset packages (MIT): 2 train_ photos of 2 products in 3; the third
    # product of each three is held out whole.
    products = sorted(p for p in (shared / "not-fruit-train").iterdir() if p.is_dir())
    ship["grocery-packages"] = []
    hold["packages-unseen-products"] = []
    hold["packages-other-photos"] = []
    for i, product in enumerate(products):
        every = images(product)
        if i % 3 == 2:
            hold["packages-unseen-products"] += every
            continue
        picked = spaced(images(product, "train_"), 2)
        ship["grocery-packages"] += picked
        hold["packages-other-photos"] += [p for p in every if p not in picked]
    # LatHort orchard tiles (CC BY 4.0): cherry tiles ship; apple and pear orchards held out.
    orchard = shared / "orchard-negatives-train"
    cherry = images(orchard / "CherryBBCH81_tiles_no_fruit")
    ship["orchard"] = spaced(cherry, 12)
    hold["orchard-unseen-orchards"] = images(orchard / "AppleBBCH81_tiles_no_fruit") + images(
        orchard / "Pear640_tiles_no_fruit"
    )
    hold["orchard-other-tiles"] = [p for p in cherry if p not in ship["orchard"]]
    # Permissive scenes: a few per category; the rest measured.
    scenes = shared / "scenes-negatives-train"
    few = (("clothing-small", 2), ("hands-sign-digits", 8), ("tf-flowers", 2))
    for source, per_category in few:
        picked = []
        for category in sorted(p for p in (scenes / source).iterdir() if p.is_dir()):
            picked += spaced(images(category), per_category)
        ship[source] = picked
        hold[f"{source}-other-photos"] = [p for p in images(scenes / source) if p not in picked]
    for source in RESEARCH_ONLY:
        hold[source] = images(scenes / source)
    return ship, hold


def shrink(src: Path, dest: Path) -> None:
    """Upright, RGB, at most MAX_SIDE px, JPEG without metadata."""
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        im.save(dest, "JPEG", quality=QUALITY, optimize=True)


def build(shared: Path, dest: Path) -> int:
    ship, _ = plan(shared)
    total = 0
    for origin, files in ship.items():
        folder = dest / origin
        folder.mkdir(parents=True, exist_ok=True)
        for old in images(folder):  # SOURCE.txt and LICENSE stay
            old.unlink()
        names = []
        for src in files:
            # the category (garment, flower, product) first: the name says what the photo is
            names.append(f"{src.parent.name}__{Path(src.name).stem}.jpg")
            shrink(src, folder / names[-1])
        listing = "\n".join(f"  {name}" for name in names)
        text = f"{NOTES[origin]}\n{CHANGES}\n\nFiles ({len(names)}):\n{listing}\n"
        (folder / "SOURCE.txt").write_text(text)
        total += len(files)
    shutil.copyfile(shared / "not-fruit-train" / "LICENSE", dest / "grocery-packages" / "LICENSE")
    return total


def write_holdout(shared: Path, out: Path) -> dict[str, int]:
    _, hold = plan(shared)
    counts = {}
    for name, files in hold.items():
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for src in files:
            (folder / f"{src.parent.name}__{src.name}").symlink_to(src.resolve())
        counts[name] = len(files)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared datasets folder")
    ap.add_argument("--dest", type=Path, default=DEST, help="where the sample is written")
    ap.add_argument("--holdout", type=Path, help="also write the held-out measuring sets here")
    args = ap.parse_args()
    n = build(args.shared, args.dest)
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"{n} images, {size / 1024:.0f} KiB in {args.dest}")
    if args.holdout:
        print(write_holdout(args.shared, args.holdout))


if __name__ == "__main__":
    main()
