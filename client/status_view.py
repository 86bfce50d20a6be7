"""`asr-client status` as plain text that fits the terminal (80 columns and up).

Three small tables instead of one wide one: devices, workers, models. Columns are as wide as
their content; when a table is wider than the terminal, its last column (product name, last
error, languages) is shortened with an ellipsis, never the names and figures.
"""

from __future__ import annotations

from collections.abc import Sequence

from client.types import ServiceStatus

GAP = "  "


def _cut(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """Aligned columns; the last column absorbs whatever does not fit in `width`."""
    cols = len(headers)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(cols)]
    fixed = sum(widths[:-1]) + len(GAP) * (cols - 1)
    widths[-1] = max(0, min(widths[-1], width - fixed))
    lines = []
    for row in [headers, *rows]:
        cells = [_cut(str(c), w).ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append(_cut(GAP.join(cells).rstrip(), width))
    return lines


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def render(st: ServiceStatus, width: int = 80) -> str:
    """The status as text lines of at most `width` characters."""
    out = [_cut(f"service {st.version or '?'}  cpu-fallback {st.cpu_fallback or '-'}  "
                f"queue {st.queue_depth}/{st.queue_capacity}", width),
           _cut(f"model {st.model or '-'}", width)]
    if st.fallbacks:
        out.append(_cut("cpu fallbacks: " + ", ".join(f"{f.reason}={f.count}"
                                                      for f in st.fallbacks), width))
    out.append("")
    out += table(("DEVICE", "MEM GiB", "UTIL", "ACCEPTS", "WORKERS", "PRODUCT"), [
        (d.name,
         f"{_gib(d.memory_used_bytes)}/{_gib(d.memory_total_bytes)}"
         if d.memory_total_bytes else "-",
         f"{d.utilization_percent}%" if d.utilization_percent >= 0 else "-",
         "yes" if d.accepting else "no",
         f"{sum(w.state == 'ready' for w in d.workers)}/{len(d.workers)} ready",
         d.product or "-") for d in st.devices], width)
    out.append("")
    out += table(("WORKER", "STATE", "PID", "IN FLIGHT", "SERVED", "RESTARTS", "LAST ERROR"), [
        (w.worker_id, w.state, str(w.pid or "-"), str(w.in_flight), str(w.served),
         str(w.restarts), w.last_error.splitlines()[0] if w.last_error else "")
        for d in st.devices for w in d.workers], width)
    out.append("")
    if st.models:
        out += table(("MODEL", "FAMILY", "ENGINE", "READY", "DEFAULT", "FEATURES", "LANGUAGES"),
                     [(m.name, m.family or "-", m.engine or "-", str(m.ready_workers),
                       "yes" if m.is_default else "", _features(m.hotwords, m.itn, m.streaming),
                       ",".join(m.languages) or "-") for m in st.models], width)
    else:
        out.append(_cut("models: none listed by this server", width))
    return "\n".join(out) + "\n"


def _features(hotwords: bool, itn: bool, streaming: bool) -> str:
    names = [n for n, on in (("hotwords", hotwords), ("itn", itn), ("streaming", streaming))
             if on]
    return ",".join(names) or "-"
