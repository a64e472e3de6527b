// tools/drill/html.h — the drill's HTML report: one self-contained document (inline CSS and SVG,
// no script, no external asset) with throughput, errors and p99 latency per second, the fault,
// detection, promotion and recovery marked on each chart. Pure and header-only.
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "tools/drill/report.h"

namespace pgkeel::drill {

namespace html_detail {

inline std::string esc(std::string_view s) {
  std::string o;
  o.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      default:
        o.push_back(c);
    }
  }
  return o;
}

inline std::string fmt(double v, const char* f = "%.1f") {
  char buf[32];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

inline std::string ms_or_dash(const std::optional<std::int64_t>& v) {
  return v ? std::to_string(*v) + " ms" : std::string("—");
}

struct Marker {
  std::int64_t t_ms;
  std::string label;
  std::string color;
};

struct Line {
  std::string name;
  std::string color;
  std::vector<double> values;  // one per second
};

// A line chart over the run's seconds, with vertical markers.
inline std::string chart(std::string_view title, std::string_view unit, const std::vector<Line>& lines,
                         const std::vector<Marker>& markers, std::int64_t elapsed_ms) {
  constexpr double kW = 900, kH = 220, kLeft = 60, kRight = 20, kTop = 28, kBottom = 30;
  const double plot_w = kW - kLeft - kRight;
  const double plot_h = kH - kTop - kBottom;
  const double seconds = std::max(1.0, static_cast<double>(elapsed_ms) / 1000.0);
  double top = 1;
  for (const auto& l : lines) {
    for (double v : l.values) {
      top = std::max(top, v);
    }
  }
  top *= 1.1;
  auto x = [&](double s) { return kLeft + plot_w * std::clamp(s / seconds, 0.0, 1.0); };
  auto y = [&](double v) { return kTop + plot_h * (1 - v / top); };
  std::string o = "<svg viewBox=\"0 0 900 220\" width=\"900\" height=\"220\" "
                  "role=\"img\">\n";
  o += "<text x=\"" + fmt(kLeft) + "\" y=\"18\" class=\"title\">" + esc(title) + " (" + esc(unit) + ")</text>\n";
  o += "<rect x=\"" + fmt(kLeft) + "\" y=\"" + fmt(kTop) + "\" width=\"" + fmt(plot_w) + "\" height=\"" + fmt(plot_h) +
       "\" class=\"plot\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double v = top * i / 4;
    o += "<text x=\"" + fmt(kLeft - 6) + "\" y=\"" + fmt(y(v) + 4) + "\" class=\"axis\" text-anchor=\"end\">" +
         fmt(v, v >= 100 ? "%.0f" : "%.1f") + "</text>\n";
  }
  const int step = seconds > 60 ? 10 : seconds > 20 ? 5 : 1;
  for (int s = 0; s <= static_cast<int>(seconds); s += step) {
    o += "<text x=\"" + fmt(x(s)) + "\" y=\"" + fmt(kH - 10) + "\" class=\"axis\" text-anchor=\"middle\">" +
         std::to_string(s) + "s</text>\n";
  }
  for (const auto& l : lines) {
    o += "<polyline fill=\"none\" stroke=\"" + l.color + "\" stroke-width=\"1.5\" points=\"";
    for (std::size_t i = 0; i < l.values.size(); ++i) {
      o += fmt(x(static_cast<double>(i) + 0.5)) + "," + fmt(y(l.values[i])) + " ";
    }
    o += "\"><title>" + esc(l.name) + "</title></polyline>\n";
  }
  int lane = 0;
  for (const auto& m : markers) {
    const double mx = x(static_cast<double>(m.t_ms) / 1000.0);
    o += "<line x1=\"" + fmt(mx) + "\" x2=\"" + fmt(mx) + "\" y1=\"" + fmt(kTop) + "\" y2=\"" + fmt(kTop + plot_h) +
         "\" stroke=\"" + m.color + "\" stroke-dasharray=\"4 3\"/>\n";
    o += "<text x=\"" + fmt(mx + 3) + "\" y=\"" + fmt(kTop + 12 + 12 * (lane++ % 4)) + "\" class=\"marker\" fill=\"" +
         m.color + "\">" + esc(m.label) + "</text>\n";
  }
  double lx = kW - kRight - 150;
  for (const auto& l : lines) {
    o += "<text x=\"" + fmt(lx) + "\" y=\"18\" class=\"legend\" fill=\"" + l.color + "\">■ " + esc(l.name) + "</text>\n";
    lx += 75;
  }
  o += "</svg>\n";
  return o;
}

}  // namespace html_detail

inline std::string to_html(const Recording& r, const Summary& s) {
  using namespace html_detail;
  std::vector<Marker> markers;
  for (std::size_t i = 0; i < r.faults.size(); ++i) {
    const auto& f = r.faults[i];
    const auto& fo = s.faults[i];
    markers.push_back({f.t_ms, std::string(to_string(f.fault.kind)), "#c0392b"});
    if (fo.detected_ms) {
      markers.push_back({*fo.detected_ms, "detected", "#d68910"});
    }
    if (fo.promoted_ms) {
      markers.push_back({*fo.promoted_ms, "promoted", "#1e8449"});
    }
    if (fo.recovered_ms) {
      markers.push_back({*fo.recovered_ms, "recovered", "#2471a3"});
    }
  }
  Line writes{"writes/s", "#2471a3", {}}, reads{"reads/s", "#7d3c98", {}}, errors{"errors/s", "#c0392b", {}},
      p99{"p99 ms", "#117a65", {}};
  for (const auto& row : s.series) {
    writes.values.push_back(static_cast<double>(row.writes));
    reads.values.push_back(static_cast<double>(row.reads));
    errors.values.push_back(static_cast<double>(row.errors));
    p99.values.push_back(row.p99_ms);
  }

  std::string o;
  o += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>pgkeel drill report</title>\n";
  o += "<style>\nbody{font-family:sans-serif;margin:2em;color:#222;max-width:960px}\n"
       "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
       "text-align:left}th{background:#f4f4f4}\n.pass{color:#1e8449;font-weight:bold}.fail{color:#c0392b;"
       "font-weight:bold}\nsvg{display:block;margin:0.5em 0}.title{font:bold 13px sans-serif}"
       ".axis{font:11px sans-serif;fill:#555}.marker,.legend{font:11px sans-serif}.plot{fill:#fafafa;stroke:#ccc}\n"
       "</style>\n</head>\n<body>\n";
  o += "<h1>pgkeel drill report</h1>\n";
  o += std::string("<p class=\"") + (s.passed() ? "pass\">PASSED" : "fail\">FAILED") + "</p>\n";
  if (!s.failures.empty()) {
    o += "<ul>\n";
    for (const auto& f : s.failures) {
      o += "<li>" + esc(f) + "</li>\n";
    }
    o += "</ul>\n";
  }
  o += "<table>\n<tr><th>duration</th><td>" + fmt(static_cast<double>(r.elapsed_ms) / 1000.0) + " s</td></tr>\n";
  o += "<tr><th>clients</th><td>" + std::to_string(r.clients) + " (" + (r.explicit_tx ? "BEGIN/INSERT/COMMIT" : "autocommit") +
       (r.prepared ? ", prepared" : "") + ", writes " + fmt(r.write_ratio * 100, "%.0f") + "%, rate " +
       (r.rate > 0 ? fmt(r.rate, "%.0f") + "/s" : std::string("max")) + ")</td></tr>\n";
  o += std::string("<tr><th>replication</th><td>") + (r.sync ? "synchronous" : "asynchronous") + "</td></tr>\n";
  o += "<tr><th>write downtime</th><td>" + ms_or_dash(s.write_downtime_ms) + "</td></tr>\n";
  o += "<tr><th>writes</th><td>" + std::to_string(s.acknowledged) + " acknowledged, " + std::to_string(s.failed) +
       " failed, " + std::to_string(s.unknown) + " unknown</td></tr>\n";
  o += "<tr><th>reads</th><td>" + std::to_string(s.reads_ok) + " answered, " + std::to_string(s.reads_failed) +
       " failed</td></tr>\n";
  o += "<tr><th>client errors</th><td>" + std::to_string(s.errors_total) + " (" + std::to_string(s.connect_failures) +
       " failed connects)</td></tr>\n";
  if (r.verdict && r.verdict->error.empty()) {
    const auto& v = *r.verdict;
    std::string lost_ids;
    for (std::size_t i = 0; i < v.lost.size() && i < 50; ++i) {
      lost_ids += (i ? ", " : "") + std::to_string(v.lost[i]);
    }
    o += "<tr><th>lost acknowledged commits</th><td>" + std::to_string(v.lost.size()) +
         (lost_ids.empty() ? "" : " (" + lost_ids + ")") + "</td></tr>\n";
    o += "<tr><th>acknowledged found</th><td>" + std::to_string(v.acknowledged - static_cast<std::int64_t>(v.lost.size())) +
         " of " + std::to_string(v.acknowledged) + "</td></tr>\n";
    o += "<tr><th>duplicates</th><td>" + std::to_string(v.duplicates.size()) + "</td></tr>\n";
    o += "<tr><th>failed writes found</th><td>" + std::to_string(v.failed_present.size()) + "</td></tr>\n";
    o += "<tr><th>unknown outcomes</th><td>" + std::to_string(v.unknown) + ": " + std::to_string(v.unknown_found.size()) +
         " committed, " + std::to_string(v.unknown_missing) + " not</td></tr>\n";
  } else {
    o += "<tr><th>verification</th><td class=\"fail\">" + esc(r.verdict ? r.verdict->error : "did not run") +
         "</td></tr>\n";
  }
  o += "</table>\n";

  o += "<h2>Over time</h2>\n";
  o += chart("Throughput", "per second", {writes, reads}, markers, r.elapsed_ms);
  o += chart("Client errors", "per second", {errors}, markers, r.elapsed_ms);
  o += chart("p99 latency", "ms", {p99}, markers, r.elapsed_ms);

  if (r.soak) {
    o += "<h2>Soak</h2>\n<p>" + std::to_string(r.faults.size()) + " of " + std::to_string(r.soak_planned) +
         " faults, seed " + std::to_string(r.soak_seed) +
         (r.soak_stopped.empty() ? std::string() : "; <b class=\"fail\">stopped: " + esc(r.soak_stopped) + "</b>") +
         "</p>\n<table>\n<tr><th>kind</th><th>faults</th><th>passed</th><th>detected after (p50 / p90 / max)</th>"
         "<th>promoted after</th><th>write downtime</th><th>whole again after</th></tr>\n";
    auto cell = [](const Spread& sp) {
      return sp.n == 0 ? std::string("—")
                       : std::to_string(sp.p50) + " / " + std::to_string(sp.p90) + " / " + std::to_string(sp.max) + " ms";
    };
    for (const auto& row : soak_table(r, s)) {
      o += "<tr><td>" + esc(row.kind) + "</td><td>" + std::to_string(row.count) + "</td><td>" + std::to_string(row.passed) +
           "</td><td>" + cell(row.detected) + "</td><td>" + cell(row.promoted) + "</td><td>" + cell(row.downtime) +
           "</td><td>" + cell(row.whole) + "</td></tr>\n";
    }
    o += "</table>\n";
    // The distribution of write downtimes: one bar per bucket.
    const auto hist = downtime_histogram(s);
    const int most = std::max(1, *std::max_element(hist.begin(), hist.end()));
    const int bar_w = 70, gap = 14, h_px = 140, top = 16, base = top + h_px;
    const int width = static_cast<int>(hist.size()) * (bar_w + gap) + gap;
    o += "<h3>Write downtime per fault</h3>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) +
         "\" height=\"" + std::to_string(base + 36) + "\" role=\"img\" aria-label=\"write downtime distribution\">\n";
    for (std::size_t i = 0; i < hist.size(); ++i) {
      const int x = gap + static_cast<int>(i) * (bar_w + gap);
      const int bh = hist[i] * h_px / most;
      o += "<rect x=\"" + std::to_string(x) + "\" y=\"" + std::to_string(base - bh) + "\" width=\"" + std::to_string(bar_w) +
           "\" height=\"" + std::to_string(bh) + "\" fill=\"#4a7bd0\"/>\n";
      o += "<text x=\"" + std::to_string(x + bar_w / 2) + "\" y=\"" + std::to_string(base - bh - 3) +
           "\" text-anchor=\"middle\" font-size=\"12\">" + std::to_string(hist[i]) + "</text>\n";
      o += "<text x=\"" + std::to_string(x + bar_w / 2) + "\" y=\"" + std::to_string(base + 16) +
           "\" text-anchor=\"middle\" font-size=\"12\">" + esc(kDowntimeBucketNames[i]) + "</text>\n";
    }
    o += "</svg>\n";
  }

  o += "<h2>Faults</h2>\n<table>\n<tr><th>fault</th><th>at</th><th>target</th><th>detected after</th>"
       "<th>promoted after</th><th>write downtime</th><th>detail</th><th>effect seen by the drill</th></tr>\n";
  for (std::size_t i = 0; i < r.faults.size(); ++i) {
    const auto& f = r.faults[i];
    const auto& fo = s.faults[i];
    auto after = [&](const std::optional<std::int64_t>& t) {
      return t ? std::optional<std::int64_t>(*t - f.t_ms) : std::nullopt;
    };
    o += "<tr><td>" + esc(fault_label(f)) + "</td><td>" + std::to_string(f.t_ms) + " ms</td><td>" +
         esc(f.target) + "</td><td>" + ms_or_dash(after(fo.detected_ms)) + "</td><td>" +
         ms_or_dash(after(fo.promoted_ms)) + "</td><td>" + ms_or_dash(fo.downtime_ms) +
         (!fo.recovered ? " (not recovered)" : fo.downtime_ms ? "" : " (writes never stopped)") + "</td><td>" +
         esc(f.detail) + "</td><td>" + (f.effect_seen ? "" : "<b>not seen:</b> ") + esc(f.effect) +
         (is_proxy_fault(f.fault.kind)
              ? std::string("; ") + (f.hit_leader ? "the store leader; " : "") +
                    (f.back_seen ? "" : "<b>not back:</b> ") + esc(f.back)
              : std::string()) +
         "</td></tr>\n";
  }
  o += "</table>\n";

  o += "<h2>Latency (ms)</h2>\n<table>\n<tr><th>phase</th><th>count</th><th>p50</th><th>p90</th><th>p99</th>"
       "<th>max</th></tr>\n";
  const std::pair<const char*, const LatencySummary*> phases[] = {
      {"before", &s.before}, {"during", &s.during}, {"after", &s.after}, {"all", &s.all}};
  for (const auto& [name, l] : phases) {
    o += std::string("<tr><td>") + name + "</td><td>" + std::to_string(l->count) + "</td><td>" + fmt(l->p50, "%.2f") +
         "</td><td>" + fmt(l->p90, "%.2f") + "</td><td>" + fmt(l->p99, "%.2f") + "</td><td>" + fmt(l->max, "%.2f") +
         "</td></tr>\n";
  }
  o += "</table>\n";

  o += "<h2>Client errors</h2>\n<table>\n<tr><th>phase</th><th>SQLSTATE</th><th>count</th><th>first</th>"
       "<th>last</th><th>example</th></tr>\n";
  for (const auto& e : r.errors) {
    o += "<tr><td>" + esc(e.phase) + "</td><td>" + esc(e.sqlstate) + "</td><td>" + std::to_string(e.count) +
         "</td><td>" + std::to_string(e.first_t_ms) + " ms</td><td>" + std::to_string(e.last_t_ms) + " ms</td><td>" +
         esc(e.example) + "</td></tr>\n";
  }
  o += "</table>\n";

  const bool instances =
      std::any_of(r.events.begin(), r.events.end(), [](const ConsoleEvent& e) { return !e.instance.empty(); });
  o += std::string("<h2>pgkeel events</h2>\n<table>\n<tr><th>at</th>") + (instances ? "<th>instance</th>" : "") +
       "<th>epoch</th><th>kind</th><th>node</th><th>detail</th></tr>\n";
  for (const auto& e : r.events) {
    o += "<tr><td>" + std::to_string(e.t_ms) + " ms</td>" + (instances ? "<td>" + esc(e.instance) + "</td>" : "") +
         "<td>" + std::to_string(e.epoch) + "</td><td>" + esc(e.kind) + "</td><td>" + esc(e.node) + "</td><td>" +
         esc(e.detail) + "</td></tr>\n";
  }
  o += "</table>\n</body>\n</html>\n";
  return o;
}

}  // namespace pgkeel::drill
