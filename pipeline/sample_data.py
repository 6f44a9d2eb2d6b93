"""Writes scikit-learn's bundled digits (1797 real 8x8 scans, no network) into the lake.

    python -m pipeline.sample_data --config conf/digits.yaml [--date YYYY-MM-DD]

Labelled images go to ``<dataset.source>/<class>/<n>.png`` (class per folder); a held-out
tenth goes, unlabelled, to ``<dataset.score_source>/dt=<date>/<n>.png`` as new input for
scoring. Its true labels are written beside, under ``raw/<dataset>/holdout_labels/``, so a
user can check the predictions.
"""
from __future__ import annotations

import argparse
import io
import logging
from datetime import date

import numpy as np

from pipeline import lake
from pipeline.config import Config, load_config

log = logging.getLogger(__name__)
HOLDOUT_FRACTION = 0.1


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_digits(cfg: Config, score_date: str) -> dict[str, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # sklearn's scans are 0..16; spread to 0..255 as a scanner would.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    n_holdout = int(len(images) * HOLDOUT_FRACTION)
    holdout, labelled = order[:n_holdout], order[n_holdout:]

    source = cfg.resolve(cfg.dataset.source)
    incoming = f"{cfg.resolve(cfg.dataset.score_source)}/dt={score_date}"
    for i in labelled:
        lake.write_bytes(f"{source}/{digits.target[i]}/{i:04d}.png", _png(images[i]))
    for i in holdout:
        lake.write_bytes(f"{incoming}/{i:04d}.png", _png(images[i]))
    labels_csv = "path,label\n" + "".join(f"{i:04d}.png,{digits.target[i]}\n" for i in holdout)
    lake.write_bytes(cfg.uri("raw", cfg.dataset.name, "holdout_labels", f"dt={score_date}.csv"), labels_csv.encode())
    log.info("wrote %d labelled images under %s and %d held-out images under %s",
             len(labelled), source, len(holdout), incoming)
    return {"labelled": len(labelled), "holdout": len(holdout)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--date", default=date.today().isoformat(), help="partition for the held-out images")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    counts = write_digits(cfg, args.date)
    print(f"sample data: {counts['labelled']} labelled, {counts['holdout']} held out for dt={args.date}")


if __name__ == "__main__":
    main()
