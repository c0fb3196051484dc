"""Checks on what a finished job leaves in its output for people (not programs)."""

from __future__ import annotations

import io

from PIL import Image

from jobstore.storage import ObjectStore, parse_s3_uri


def check_loss_plot(store: ObjectStore, output_uri: str) -> Image.Image:
    """The job's loss.png: a real PNG of the drawn size, with a drawing on it."""
    found = store.get_bytes(parse_s3_uri(output_uri + "training_artifacts/loss.png", field="u"))
    assert found is not None, "training_artifacts/loss.png was not written"
    data = found[0]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < 2_000_000
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.size == (800, 450)
    colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50, "an empty picture"
    return image
