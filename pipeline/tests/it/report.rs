//! `report`: one self-contained HTML file whose every chart has data marks, rendered by
//! headless Chromium (the screenshot shows each chart's own color and is not blank). Without
//! Chromium (`make test` installs it when it can) the rendering part is skipped loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Data, u};

/// The pipeline's state after two runs (a late batch in between), with dirty rows.
fn world() -> Data {
    let d = Data::new();
    d.ok(&[
        "run",
        "--generate",
        "--to",
        "profiles",
        "--rows",
        "20000",
        "--days",
        "20",
        "--customers",
        "300",
        "--dirty-rate",
        "0.03",
    ]);
    d.ok(&[
        "generate",
        "--rows",
        "2000",
        "--days",
        "2",
        "--batch",
        "2",
        "--start-date",
        "2024-01-05",
        "--dirty-rate",
        "0.03",
    ]);
    d.ok(&["run", "--to", "profiles"]);
    d
}

/// The figures of the page: (id, primary color, the figure's markup).
fn figures(html: &str) -> Vec<(String, String, String)> {
    html.split("<figure ")
        .skip(1)
        .map(|f| {
            let attr = |name: &str| {
                let start = f.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
                f[start..start + f[start..].find('"').unwrap()].to_string()
            };
            (attr("id"), attr("data-primary"), f.to_string())
        })
        .collect()
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .ok()?;
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
        })
}

/// Render `html` to a PNG with headless Chromium; its pixels (RGB) and width.
fn screenshot(browser: &Path, html: &Path, dir: &Path) -> (Vec<[u8; 3]>, usize) {
    let png = dir.join("shot.png");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1000,3000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(
        png.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected PNG color type {other:?}"),
    };
    let pixels = buf[..info.buffer_size()]
        .chunks(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (pixels, info.width as usize)
}

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

#[test]
fn the_report_is_one_offline_file_whose_every_chart_is_drawn_and_rendered() {
    let d = world();
    let out = d.path().join("report.html");
    let r = d.ok(&["report", "--out", out.to_str().unwrap()]);
    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(u(&r, "bytes"), html.len() as u64);

    // Self-contained: nothing fetched (the only URL is the SVG namespace).
    for banned in ["<script", "<link", "src=", "url(", "@import"] {
        assert!(!html.contains(banned), "the page references {banned}");
    }
    let urls = html.matches("http").count();
    assert_eq!(urls, html.matches("http://www.w3.org/2000/svg").count());

    let figs = figures(&html);
    let ids: Vec<&str> = figs.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        ids,
        [
            "daily_volume",
            "daily_amount",
            "declined_share",
            "quarantine",
            "top_customers",
            "stage_seconds",
            "stage_throughput"
        ]
    );
    for (id, primary, markup) in &figs {
        let reported = r["charts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id.as_str())
            .unwrap();
        assert!(u(reported, "points") > 0, "{id} has no data: {r}");
        // Data marks in the chart's own color: points (circles) or bars (rects).
        let marks = markup.matches(&format!("fill=\"{primary}\"")).count()
            + markup
                .matches(&format!("fill=\"{}\"", primary.to_uppercase()))
                .count();
        assert!(marks >= 2, "{id}: {marks} marks in {primary}");
    }
    // 20 + 2 days, two runs, 10 top customers.
    assert_eq!(u(&r["charts"][1], "points"), 20);
    assert_eq!(u(&r["charts"][4], "points"), 10);

    let Some(browser) = chromium() else {
        eprintln!(
            "\n*** SKIPPED: headless Chromium is not installed (Debian package `chromium`; \
             `make test` installs it when it can): the report's rendering was NOT checked ***\n"
        );
        return;
    };
    let (pixels, width) = screenshot(&browser, &out, d.path());
    let inked = pixels.iter().filter(|p| p.iter().any(|c| *c < 200)).count();
    assert!(
        inked * 100 > pixels.len(),
        "the page is (nearly) blank: {inked} of {} pixels inked",
        pixels.len()
    );
    for (id, primary, _) in &figs {
        let want = rgb(primary);
        let near = pixels
            .iter()
            .filter(|p| (0..3).all(|i| p[i].abs_diff(want[i]) <= 6))
            .count();
        assert!(
            near >= 40,
            "{id}: only {near} pixels of its color {primary} in the {width}-px-wide screenshot"
        );
    }
}

#[test]
fn a_report_before_any_data_says_no_data_in_each_chart() {
    let d = Data::new();
    let out = d.path().join("r.html");
    let r = d.ok(&["report", "--out", out.to_str().unwrap()]);
    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(r["charts"].as_array().unwrap().len(), 7);
    assert!(
        r["charts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["points"] == 0)
    );
    assert_eq!(html.matches("no data yet").count(), 7);
}
