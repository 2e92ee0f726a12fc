"""
Turning a report into something to read: a plain-text/RST summary table and
a PNG plot of latency (and throughput) against concurrency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(item, measured, ratio / verdict) rows for the summary table."""
    out: list[tuple[str, str, str]] = []
    f = report.get("floor", {})
    w = report.get("warm", {})
    c = report.get("cold", {})
    lf = report.get("large_folder", {})
    t = report.get("throughput", {})
    p = report.get("peer", {})
    out.append(("floor", f"p50 {_fmt(f.get('p50_ms'))} ms, p99 {_fmt(f.get('p99_ms'))} ms, client CPU "
                         f"{_fmt(f.get('client_cpu_ms_per_call'))} ms/call", f.get("error", "")))
    out.append(("warm", f"p50 {_fmt(w.get('p50_ms'))} ms, p99 {_fmt(w.get('p99_ms'))} ms, "
                        f"daemon CPU {_fmt(w.get('daemon_cpu_ms_per_call'))} ms/call",
                f"warm_p50/floor_p50 = {_fmt(w.get('warm_p50/floor_p50'))}" if "error" not in w else w["error"]))
    wf = report.get("web_floor") or {}
    if wf:
        loaded = wf.get("loaded") or {}
        out.append(("web floor", f"p50 {_fmt(wf.get('p50_ms'))} ms, server CPU {_fmt(wf.get('server_cpu_ms_per_call'))}"
                                 f" ms/call ({_fmt(loaded.get('server_cpu_ms_per_call'))} with"
                                 f" {_fmt(loaded.get('concurrency'))} in flight)",
                    f"warm beyond both floors: {_fmt(w.get('beyond_floors_p50_ms'))} ms; warm_p50/(floor_p50"
                    f"+web_floor_p50) = {_fmt(w.get('warm_p50/(floor_p50+web_floor_p50)'))}"))
    fs = w.get("first_sight") or {}
    out.append(("warm first sight", f"p50 {_fmt(fs.get('p50_ms'))} ms, p99 {_fmt(fs.get('p99_ms'))} ms, "
                                    f"daemon CPU {_fmt(fs.get('daemon_cpu_ms_per_call'))} ms/call",
                f"p50/floor_p50 = {_fmt(fs.get('p50/floor_p50'))}" if "error" not in w else ""))
    out.append(("cold", f"p50 {_fmt(c.get('p50_ms'))} ms (bare connect-per-call "
                        f"{_fmt(c.get('bare_connect_per_call_p50_ms'))} ms)",
                f"cold_p50/warm_p50 = {_fmt(c.get('cold_p50/warm_p50'))}" if "error" not in c else c["error"]))
    out.append(("large_folder", f"{_fmt(lf.get('large_folder_messages'))} msgs p50 {_fmt(lf.get('large_p50_ms'))} ms"
                                f" vs {_fmt(lf.get('small_folder_messages'))} msgs {_fmt(lf.get('small_p50_ms'))} ms",
                f"large_p50/small_p50 = {_fmt(lf.get('large_p50/small_p50'))}" if "error" not in lf else lf["error"]))
    out += _tool_rows(report)
    for key, item in (report.get("concurrency") or {}).items():
        if key == "error":
            out.append(("concurrency", "", str(item)))
            continue
        out.append((f"concurrency N={item.get('accounts')}",
                    f"success {_fmt(item.get('success_rate'))}, {_fmt(item.get('throughput_per_s'))} calls/s, "
                    f"p99 {_fmt(item.get('p99_ms'))} ms (first call p99 {_fmt(item.get('first_call_p99_ms'))} ms)",
                    f"reactor lag p99 {_fmt(item.get('reactor_lag_p99_ms'))} ms, "
                    f"peak RSS {_fmt(item.get('peak_rss_mib'))} MiB"))
    out.append(("throughput", f"{_fmt(t.get('calls_per_s'))} calls/s at concurrency {_fmt(t.get('best_concurrency'))}"
                              f"; IMAP ceiling {_fmt(t.get('ceiling_calls_per_s'))} calls/s",
                f"ceiling_ratio = {_fmt(t.get('ceiling_ratio'))}" if "error" not in t else t["error"]))
    if "error" in p:
        out.append(("peer", "", p["error"][:200]))
    else:
        big = p.get("large_folder") or {}
        out.append(("peer", f"p50 {_fmt(p.get('p50_ms'))} ms, {_fmt(p.get('calls_per_s'))} calls/s; "
                            f"large folder: {'served' if big.get('served') else 'refused/failed'}",
                    f"peer_p50/mailmcp_p50 = {_fmt(p.get('peer_p50/mailmcp_p50'))}, "
                    f"mailmcp/peer throughput = {_fmt(p.get('mailmcp_throughput/peer_throughput'))}"))
    return out


def _vs_floor(name: str, item: dict[str, Any], floor_key: str = "floor_p50_ms",
              ratio_key: str = "p50/floor_p50") -> tuple[str, str, str]:
    return (name, f"p50 {_fmt(item.get('p50_ms'))} ms, floor {_fmt(item.get(floor_key))} ms",
            f"{ratio_key} = {_fmt(item.get(ratio_key))}")


def _tool_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One row per tool measured against its own raw floor (conversations, reading, search, send, scale-out)."""
    out: list[tuple[str, str, str]] = []
    sections = (
        ("conversations", ("get_mailbox_changes", "get_mail_thread")),
        ("get_message", ("newsletter_html", "attachment_2mb_linked", "attachment_2mb_first_read")),
        ("search", ("small_folder", "large_folder")),
    )
    for section, keys in sections:
        data = report.get(section) or {}
        if "error" in data:
            out.append((section, "", str(data["error"])[:200]))
            continue
        for key in keys:
            if isinstance(data.get(key), dict):
                label = f"{section} {key}" if section != "conversations" else key
                item = data[key]
                if section == "search":
                    label += f" ({_fmt(item.get('folder_messages'))} msgs)"
                    out.append((label, f"p50 {_fmt(item.get('p50_ms'))} ms, UID SEARCH "
                                       f"{_fmt(item.get('uid_search_p50_ms'))} ms, + FETCH "
                                       f"{_fmt(item.get('search_and_fetch_p50_ms'))} ms",
                                f"p50/floor_p50 = {_fmt(item.get('p50/floor_p50'))} (vs UID SEARCH "
                                f"{_fmt(item.get('p50/uid_search_p50'))})"))
                else:
                    out.append(_vs_floor(label, item))
    send = report.get("send") or {}
    if "error" in send:
        out.append(("send", "", str(send["error"])[:200]))
    elif send:
        out.append(("send", f"p50 {_fmt(send.get('p50_ms'))} ms, smtplib {_fmt(send.get('smtplib_p50_ms'))} ms, "
                            f"+ APPEND {_fmt(send.get('smtplib_and_append_p50_ms'))} ms",
                    f"p50/floor_p50 = {_fmt(send.get('p50/floor_p50'))} (vs smtplib "
                    f"{_fmt(send.get('p50/smtplib_p50'))})"))
    scale = report.get("scale_out") or {}
    if "error" in scale:
        out.append(("scale_out", "", str(scale["error"])[:200]))
    elif scale:
        procs = scale.get("processes") or {}
        out.append(("scale_out", "calls/s behind HAProxy: 1 process "
                                 f"{_fmt((procs.get('1') or {}).get('calls_per_s'))}, 2 processes "
                                 f"{_fmt((procs.get('2') or {}).get('calls_per_s'))}",
                    f"ceiling_ratio (2 processes) = {_fmt(scale.get('ceiling_ratio'))}"))
    return out


def rst_table(report: dict[str, Any]) -> str:
    data = [("item", "measured", "ratio")] + rows(report)
    widths = [max(len(r[i]) for r in data) for i in range(3)]
    sep = "  ".join("=" * w for w in widths)
    lines = [sep, "  ".join(data[0][i].ljust(widths[i]) for i in range(3)).rstrip(), sep]
    for r in data[1:]:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)).rstrip())
    lines.append(sep)
    return "\n".join(lines)


def targets_text(report: dict[str, Any]) -> str:
    lines = []
    for name, t in (report.get("targets") or {}).items():
        mark = {True: "met", False: "NOT met", None: "not measured"}[t.get("met")]
        lines.append(f"  {name}: {_fmt(t.get('value'))} -> {mark}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    """Latency (p50, p99) and throughput against concurrency.  Returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = [(lv["concurrency"], lv.get("p50_ms"), lv.get("p99_ms"), lv.get("calls_per_s"))
              for lv in (report.get("throughput") or {}).get("levels") or [] if lv.get("p50_ms") is not None]
    accounts = [(it["accounts"], it.get("p50_ms"), it.get("p99_ms"), it.get("throughput_per_s"))
                for it in (report.get("concurrency") or {}).values()
                if isinstance(it, dict) and it.get("p50_ms") is not None]
    if not levels and not accounts:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax2 = ax.twinx()
    for points, style, label in ((sorted(levels), "-", "8 accounts, warm"),
                                 (sorted(accounts), ":", "N distinct accounts (1st call logs in)")):
        if not points:
            continue
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1] for p in points], "o" + style, color="tab:blue", label=f"p50, {label}")
        ax.plot(xs, [p[2] for p in points], "s" + style, color="tab:orange", label=f"p99, {label}")
        ax2.plot(xs, [p[3] for p in points], "^" + style, color="tab:green", alpha=0.6, label=f"calls/s, {label}")
    floor = (report.get("floor") or {}).get("p50_ms")
    if floor:
        ax.axhline(floor, color="grey", linestyle=":", label=f"IMAP floor p50 ({floor:.2f} ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients (one call in flight each)")
    ax.set_ylabel("latency (ms)")
    ax2.set_ylabel("throughput (calls/s)")
    ax2.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=7)
    machine = report.get("machine", {})
    ax.set_title(f"mailmcp list_mail_messages, {machine.get('cores')} cores, {report.get('date', '')[:10]}"
                 f" ({report.get('mode')})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
