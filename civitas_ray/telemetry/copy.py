"""PostgreSQL binary COPY encoding of telemetry rows, vectorised with numpy.

Rows are grouped by metric (the only variable-length column), and each group is laid
out as one numpy structured array whose bytes are exactly the COPY tuples: no Python
object per reading. Column order: tenant_id, asset_id, metric, ts, value, quality.
"""

from __future__ import annotations

import struct

import numpy as np

COLUMNS = ("tenant_id", "asset_id", "metric", "ts", "value", "quality")
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
# PostgreSQL timestamps count microseconds from 2000-01-01.
PG_EPOCH_OFFSET_US = 946_684_800_000_000


def _group_dtype(metric_len: int) -> np.dtype:
    return np.dtype([
        ("nf", ">i2"),
        ("l_tenant", ">i4"), ("tenant", "V16"),
        ("l_asset", ">i4"), ("asset", "V16"),
        ("l_metric", ">i4"), ("metric", f"S{metric_len}" if metric_len else "V0"),
        ("l_ts", ">i4"), ("ts", ">i8"),
        ("l_value", ">i4"), ("value", ">f8"),
        ("l_quality", ">i4"), ("quality", ">i2"),
    ])


def encode(*, tenant: np.ndarray, asset: np.ndarray, metric_codes: np.ndarray,
           metric_names: list[str], ts_us: np.ndarray, value: np.ndarray,
           quality: np.ndarray) -> bytes:
    """Encode rows; `tenant`/`asset` are `V16` (UUID bytes), metrics are codes into names."""
    parts = [HEADER]
    for code, name in enumerate(metric_names):
        sel = np.flatnonzero(metric_codes == code)
        if sel.size == 0:
            continue
        raw = name.encode()
        rec = np.empty(sel.size, dtype=_group_dtype(len(raw)))
        rec["nf"] = 6
        rec["l_tenant"] = 16
        rec["tenant"] = tenant[sel]
        rec["l_asset"] = 16
        rec["asset"] = asset[sel]
        rec["l_metric"] = len(raw)
        if raw:
            rec["metric"] = raw
        rec["l_ts"] = 8
        rec["ts"] = ts_us[sel] - PG_EPOCH_OFFSET_US
        rec["l_value"] = 8
        rec["value"] = value[sel]
        rec["l_quality"] = 2
        rec["quality"] = quality[sel]
        parts.append(rec.tobytes())
    parts.append(TRAILER)
    return b"".join(parts)
