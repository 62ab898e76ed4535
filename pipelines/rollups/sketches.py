"""The HLL conventions: lg_k, target type, id normalisation, serialization, estimate and bounds.

The stream (via the loader) and the backfill both build sketches here, so the same viewers always
give the same bytes. Unique counts over longer ranges are unions of these sketches, never sums.
"""

from __future__ import annotations

from collections.abc import Iterable

from datasketches import hll_sketch, hll_union, tgt_hll_type

LG_K = 12
TARGET_TYPE = tgt_hll_type.HLL_4
# The same type by name, for the job's sketches on the JVM (datasketches-java TgtHllType).
TARGET_TYPE_NAME = TARGET_TYPE.name
# Bounds are reported at two standard deviations (about 95 %).
BOUNDS_NUM_STD = 2


def normalise_viewer_id(viewer_id: int | str) -> int:
    """Viewer ids are positive 64-bit integers; a string of digits from JSON is the same viewer."""
    value = int(viewer_id)
    if value <= 0:
        raise ValueError(f"viewer_id must be a positive integer, got {viewer_id!r}")
    return value


def new_sketch() -> hll_sketch:
    return hll_sketch(LG_K, TARGET_TYPE)


def sketch_of(viewer_ids: Iterable[int | str]) -> hll_sketch:
    """The sketch of a set of viewers, the same bytes however the ids arrived.

    An HLL's registers do not depend on update order but its HIP estimator does, so ids are
    deduplicated and fed in ascending order: the stream (ids in arrival order) and a backfill
    (ids in table order) then agree byte for byte.
    """
    sketch = new_sketch()
    update = sketch.update
    for viewer_id in sorted({normalise_viewer_id(v) for v in viewer_ids}):
        update(viewer_id)
    return sketch


def to_bytes(sketch: hll_sketch) -> bytes:
    return bytes(sketch.serialize_compact())


def from_bytes(data: bytes) -> hll_sketch:
    return hll_sketch.deserialize(data)


def union(sketches: Iterable[bytes | hll_sketch]) -> hll_sketch:
    """Union of sketches (bytes or objects); the result is an HLL_4 sketch at LG_K."""
    merged = hll_union(LG_K)
    for item in sketches:
        if not item:
            continue
        merged.update(from_bytes(item) if isinstance(item, (bytes, bytearray)) else item)
    return merged.get_result(TARGET_TYPE)


def estimate_with_bounds(sketch: hll_sketch, num_std: int = BOUNDS_NUM_STD) -> tuple[float, float, float]:
    """(estimate, lower bound, upper bound) at num_std (1, 2 or 3) standard deviations."""
    return sketch.get_estimate(), sketch.get_lower_bound(num_std), sketch.get_upper_bound(num_std)
