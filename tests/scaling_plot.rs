//! Figures: written as SVG and PNG, the SVG well-formed, one series per run, and the full report on synthetic runs.
#![cfg(feature = "plot")]

use candle_structured::scaling::bootstrap::BootstrapOptions;
use candle_structured::scaling::plot::{loss_vs_compute, residuals, LossComputeFigure};
use candle_structured::scaling::report::{write_report, ReportOptions};
use candle_structured::scaling::runs::{Family, Run, RunPoint};
use candle_structured::scaling::study::StudyOptions;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cs-scaling-plot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Minimal XML well-formedness check: every tag opened is closed in order (self-closing tags aside).
fn check_xml(s: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let j = rest.find('>').expect("unterminated tag");
        let tag = &rest[..j];
        rest = &rest[j + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/')
            .collect();
        if tag.starts_with('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.as_str()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
}

fn runs(k: usize, fam: Family) -> Vec<Run> {
    (0..k)
        .map(|i| {
            let n = 1e5 * 3f64.powi(i as i32);
            Run::from_points(
                format!("{}{i}", fam.name()),
                fam.clone(),
                Some(n),
                (1..=10).map(|s| {
                    let c = 6.0 * n * 1e5 * s as f64;
                    (c, 3.0 + 5.0 * (1e13 / c).powf(0.1) + (1e5 / n).powf(0.2))
                }),
            )
        })
        .collect()
}

#[test]
fn loss_vs_compute_has_one_series_per_run() {
    let dir = tmp("series");
    let count = |k: usize| -> (usize, String) {
        let rs = runs(k, Family::FastFood);
        let refs: Vec<&Run> = rs.iter().collect();
        let fig = LossComputeFigure {
            title: "t".into(),
            curves: LossComputeFigure::curves_for(&refs, |_| false),
            ..Default::default()
        };
        let (svg, png) = loss_vs_compute(&fig, dir.join(format!("f{k}"))).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        check_xml(&text);
        for r in &rs {
            // The legend names each run once, with its trainable N.
            let label = candle_structured::scaling::runs::run_label(r);
            assert_eq!(
                text.lines().filter(|l| l.trim() == label).count(),
                1,
                "{label}"
            );
        }
        // Run curves are the only 2-px polylines: one for the curve, one for its legend sample.
        let series = text
            .lines()
            .filter(|l| l.contains("<polyline") && l.contains("stroke-width=\"2\""))
            .count();
        (series, text)
    };
    let (p2, _) = count(2);
    let (p5, text) = count(5);
    assert_eq!((p2, p5), (2 * 2, 2 * 5));
    assert!(text.contains("compute C (PF-days)"));
    let (svg, png) = residuals(
        "res",
        &[(1e15, 0.01), (1e16, -0.02), (1e17, 0.005)],
        dir.join("r"),
    )
    .unwrap();
    check_xml(&std::fs::read_to_string(svg).unwrap());
    assert!(std::fs::metadata(png).unwrap().len() > 1000);
    // Nothing to draw is an error, not a panic.
    assert!(loss_vs_compute(&LossComputeFigure::default(), dir.join("empty")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_on_synthetic_families() {
    let dir = tmp("report");
    let mut all = runs(4, Family::Baseline);
    for (i, mut r) in runs(2, Family::Doped).into_iter().enumerate() {
        r.name = format!("doped-{i}");
        r.n_frozen = r.n_trainable.unwrap();
        // Give doped runs tokens so that compute follows the cost model.
        let n = r.n_trainable.unwrap();
        r.points = r
            .points
            .iter()
            .map(|p| RunPoint {
                tokens: Some(p.compute / (6.0 * n)),
                ..*p
            })
            .collect();
        all.push(r);
    }
    all.extend(runs(3, Family::BlockDiag));
    let opts = ReportOptions {
        study: StudyOptions {
            bootstrap: BootstrapOptions {
                resamples: 30,
                seed: 1,
                level: 0.95,
            },
            ..Default::default()
        },
        chinchilla: false,
        ..Default::default()
    };
    let out = write_report(&all, &dir, &opts).unwrap();
    for f in [
        "fig1_baselines",
        "fig2_doped_cost2of3",
        "fig3_doped_cost0",
        "fig7_blockdiag",
        "fig_residuals",
    ] {
        for ext in ["svg", "png"] {
            let p = dir.join(format!("{f}.{ext}"));
            assert!(p.is_file(), "{}", p.display());
        }
        let svg = std::fs::read_to_string(dir.join(format!("{f}.svg"))).unwrap();
        check_xml(&svg);
    }
    // Figure 2 draws the doped runs solid and the 4 baselines dotted: every run is in the legend.
    let svg = std::fs::read_to_string(dir.join("fig2_doped_cost2of3.svg")).unwrap();
    for r in all.iter().filter(|r| r.family != Family::BlockDiag) {
        assert!(svg.contains(&r.name), "{}", r.name);
    }
    assert!(out.markdown.contains("## Verdict"));
    assert!(out.markdown.contains("-0.041"));
    assert_eq!(out.figures.len(), 10);
    assert!(dir.join("report.md").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
