//! Plots as hand-written SVG: a timeline of one failover (each pod's role
//! label and the Service's endpoint), and failover-time distributions.

use std::fmt::Write as _;

use super::recorder::Change;

const W: f64 = 760.0;
const LEFT: f64 = 130.0;
const RIGHT: f64 = 20.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn role_colour(role: &str) -> &'static str {
    match role {
        "active" => "#2e9e44",
        "passive" => "#9aa5b1",
        "terminating" => "#e0a030",
        _ => "#ffffff",
    }
}

const POD_COLOURS: [&str; 4] = ["#2f6fd0", "#2fa8a8", "#8a3fc0", "#c0a02f"];

/// One failover: rows per pod (role label) and one for the endpoints, from
/// t0 (the app starts failing) to `end`; `marks` are labelled instants.
pub fn timeline(
    title: &str,
    t0: f64,
    end: f64,
    history: &[Change],
    marks: &[(&str, f64)],
) -> String {
    let mut pods: Vec<String> = history
        .iter()
        .flat_map(|c| c.view.roles.keys().cloned())
        .collect();
    pods.sort();
    pods.dedup();
    let span = (end - t0).max(0.1);
    let x = |t: f64| LEFT + (t - t0).clamp(0.0, span) / span * (W - LEFT - RIGHT);
    let row_h = 26.0;
    let rows = pods.len() + 1;
    let h = 60.0 + rows as f64 * (row_h + 8.0) + 50.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">
<text x="10" y="20" font-size="14" font-weight="bold">{}</text>
"#,
        esc(title)
    );
    let segments = |f: &dyn Fn(&Change) -> String| {
        let mut out: Vec<(f64, f64, String)> = Vec::new();
        for (i, c) in history.iter().enumerate() {
            let next = history.get(i + 1).map_or(end, |n| n.t);
            out.push((c.t, next.min(end), f(c)));
        }
        out
    };
    for (r, pod) in pods.iter().enumerate() {
        let y = 40.0 + r as f64 * (row_h + 8.0);
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{} role</text>"#,
            y + 17.0,
            esc(pod)
        );
        for (a, b, role) in segments(&|c: &Change| {
            c.view
                .roles
                .get(pod)
                .cloned()
                .unwrap_or_else(|| "gone".into())
        }) {
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{y}" width="{:.1}" height="{row_h}" fill="{}" stroke="#555" stroke-width="0.3"><title>{} {:.3}s–{:.3}s</title></rect>"##,
                x(a),
                (x(b) - x(a)).max(0.5),
                role_colour(&role),
                esc(&role),
                a - t0,
                b - t0
            );
        }
    }
    let y = 40.0 + pods.len() as f64 * (row_h + 8.0);
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}">Service endpoint</text>"#,
        y + 17.0
    );
    for (a, b, ep) in segments(&|c: &Change| c.view.endpoints.join("+")) {
        let colour = if ep.is_empty() {
            "#d03030"
        } else if ep.contains('+') {
            "#000000"
        } else {
            pods.iter()
                .position(|p| *p == ep)
                .map_or("#444", |i| POD_COLOURS[i % POD_COLOURS.len()])
        };
        let label = if ep.is_empty() {
            "none".to_string()
        } else {
            ep.clone()
        };
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{y}" width="{:.1}" height="{row_h}" fill="{colour}"><title>{} {:.3}s–{:.3}s</title></rect>"#,
            x(a),
            (x(b) - x(a)).max(0.5),
            esc(&label),
            a - t0,
            b - t0
        );
    }
    let axis_y = y + row_h + 14.0;
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#000"/>"##,
        W - RIGHT
    );
    let step = nice_step(span);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let px = x(t0 + t);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{axis_y}" x2="{px:.1}" y2="{}" stroke="#000"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            axis_y + 4.0,
            axis_y + 16.0,
            fmt_secs(t)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">seconds after the app started failing</text>"#,
        W - RIGHT,
        axis_y + 32.0
    );
    for (name, t) in marks {
        let px = x(*t);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="32" x2="{px:.1}" y2="{axis_y}" stroke="#000" stroke-dasharray="4 3"/><text x="{:.1}" y="34" font-size="11">{}</text>"##,
            px + 3.0,
            esc(name)
        );
    }
    let legend = [
        ("active", "#2e9e44"),
        ("passive", "#9aa5b1"),
        ("terminating", "#e0a030"),
        ("no endpoint", "#d03030"),
    ];
    for (i, (name, colour)) in legend.iter().enumerate() {
        let lx = LEFT + i as f64 * 120.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="{}" width="12" height="12" fill="{colour}" stroke="#555" stroke-width="0.3"/><text x="{}" y="{}">{name}</text>"##,
            h - 16.0,
            lx + 16.0,
            h - 6.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Failover times per system as dots on a log axis, with the median marked.
pub fn distributions(title: &str, series: &[(String, Vec<f64>)]) -> String {
    let (lo, hi) = (0.1_f64, 200.0_f64);
    let x = |v: f64| {
        LEFT + (v.clamp(lo, hi).log10() - lo.log10()) / (hi.log10() - lo.log10())
            * (W - LEFT - RIGHT)
    };
    let row_h = 40.0;
    let h = 50.0 + series.len() as f64 * row_h + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">
<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (r, (name, values)) in series.iter().enumerate() {
        let y = 45.0 + r as f64 * row_h;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{} (n={})</text>"#,
            y + 4.0,
            esc(name),
            values.len()
        );
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        for (i, v) in values.iter().enumerate() {
            let jitter = ((i * 7919) % 13) as f64 - 6.0;
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}" fill-opacity="0.6"><title>{v:.3} s</title></circle>"##,
                x(*v),
                y + jitter,
                POD_COLOURS[r % POD_COLOURS.len()]
            );
        }
        let m = super::stats::summary(values);
        if m.n > 0 {
            let px = x(m.median);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#000" stroke-width="2"/><text x="{px:.1}" y="{}" text-anchor="middle" font-size="10">{}</text>"##,
                y - 12.0,
                y + 12.0,
                y + 24.0,
                fmt_secs(m.median)
            );
        }
    }
    let axis_y = 45.0 + series.len() as f64 * row_h;
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#000"/>"##,
        W - RIGHT
    );
    for v in [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0] {
        let px = x(v);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{axis_y}" x2="{px:.1}" y2="{}" stroke="#000"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            axis_y + 4.0,
            axis_y + 16.0,
            fmt_secs(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">seconds from failing app to new endpoint (log scale; bar = median)</text>"#,
        W - RIGHT,
        axis_y + 32.0
    );
    s.push_str("</svg>\n");
    s
}

fn nice_step(span: f64) -> f64 {
    let raw = span / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(mag * 10.0)
}

fn fmt_secs(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}s")
    } else if v >= 1.0 {
        format!("{v:.1}s")
    } else {
        format!("{v:.2}s")
    }
}
