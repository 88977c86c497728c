//! Reading learning curves: training-loop JSONL logs (tolerant of headers, resumed runs and truncated lines) and CSV.
#![cfg(feature = "fit")]

use candle_structured::flops::{CostModel, FrozenCost};
use candle_structured::scaling::runs::{
    parse_csv, parse_jsonl, read_csv, read_run_dir, read_runs_dir, to_csv, Family, LossKind,
};

const LOG: &str = r#"{"event":"start","step":0,"preset":"doped-xsmall-cpu","config":{"d_model":128,"layers":[{"Block":"Dense"}]},"n_trainable_non_embedding":600000,"n_frozen":400000}
{"step":1,"tokens":4096,"flops":1.0,"train_loss":8.0,"lr":0.0001}
{"step":2,"tokens":8192,"flops":2.0,"train_loss":7.0,"val_loss":7.5}
{"step":3,"tokens":12288,"flops":3.0,"train_loss":6.0}
{"event":"resume","step":2}
{"step":3,"tokens":12288,"flops":3.0,"train_loss":6.1}
{"step":4,"tokens":16384,"flops":4.0,"train_loss":5.0,"val_loss":5.5}

{"event":"final","step":4,"tokens":16384,"flops":4.0,"val_loss":5.4,"test_loss":5.45}
{"step":5,"tokens":20480,"tra"#;

#[test]
fn jsonl_log_is_read_tolerantly() {
    let run = parse_jsonl("doped-xsmall-cpu", LOG, None).unwrap();
    assert_eq!(run.family, Family::Doped);
    assert_eq!(run.n_trainable, Some(600000.0));
    assert_eq!(run.n_frozen, 400000.0);
    assert_eq!(run.loss_kind, LossKind::Validation);
    // Validation points only: step 2 and step 4 (the final line replaces the step-4 line).
    assert_eq!(run.points.len(), 2);
    assert_eq!(run.points[0].loss, 7.5);
    assert_eq!(run.points[1].loss, 5.4);
    assert_eq!(run.points[1].tokens, Some(16384.0));
    assert_eq!(run.skipped_lines, 1); // the truncated last line
                                      // Compute recomputed from tokens: 6·N + 4·frozen per token at cost 2/3, 6·N at cost 0.
    let c = run.with_cost(&CostModel::new(FrozenCost::TwoThirds));
    assert_eq!(
        c.points[1].compute,
        (6.0 * 600000.0 + 4.0 * 400000.0) * 16384.0
    );
    let c0 = run.with_cost(&CostModel::new(FrozenCost::Free));
    assert_eq!(c0.points[1].compute, 6.0 * 600000.0 * 16384.0);
    // Without validation lines the training loss is used, duplicated steps keep their last occurrence.
    let train_only: String = LOG
        .lines()
        .filter(|l| !l.contains("val_loss"))
        .collect::<Vec<_>>()
        .join("\n");
    let run = parse_jsonl("xsmall-cpu", &train_only, None).unwrap();
    assert_eq!(run.loss_kind, LossKind::Train);
    assert_eq!(run.family, Family::Baseline);
    let losses: Vec<f64> = run.points.iter().map(|p| p.loss).collect();
    assert_eq!(losses, vec![8.0, 6.1]);
    // Logged flops are used when N is unknown.
    let no_n: String = LOG.replace("n_trainable_non_embedding", "x");
    let run = parse_jsonl("r", &no_n, None).unwrap();
    assert_eq!(run.n_trainable, None);
    assert_eq!(run.points[1].compute, 4.0);
    assert!(parse_jsonl("empty", "\n{\"event\":\"start\"}\n", None).is_err());
}

#[test]
fn run_folders_and_csv() {
    let root = std::env::temp_dir().join(format!("cs-scaling-runs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (name, cfg) in [
        ("fastfood-cpu", None),
        (
            "base",
            Some(r#"{"model":{"family":"blockdiag"},"n_trainable":1000}"#),
        ),
    ] {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("log.jsonl"),
            "{\"step\":1,\"tokens\":10,\"val_loss\":3.0,\"n_params\":2000}\n{\"step\":2,\"tokens\":20,\"val_loss\":2.0}\n",
        )
        .unwrap();
        if let Some(c) = cfg {
            std::fs::write(d.join("config.json"), c).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("cache")).unwrap(); // no log: skipped
    let runs = read_runs_dir(&root).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].name, "base");
    assert_eq!(runs[0].family, Family::BlockDiag);
    assert_eq!(runs[0].n_trainable, Some(1000.0));
    assert_eq!(runs[1].family, Family::FastFood);
    assert_eq!(runs[1].n_trainable, Some(2000.0));
    assert_eq!(runs[1].points[1].compute, 6.0 * 2000.0 * 20.0);
    assert!(read_run_dir(root.join("cache")).is_err());
    assert!(read_runs_dir(root.join("missing")).is_err());

    // CSV round trip.
    let text = to_csv(&runs);
    let back = parse_csv(&text).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[0].points.len(), 2);
    assert_eq!(back[1].points[1].compute, runs[1].points[1].compute);
    assert_eq!(back[0].family, Family::BlockDiag);
    let p = root.join("c.csv");
    std::fs::write(
        &p,
        "# comment\nrun,compute,loss\na,1e15,3.2\na,2e15,3.0\nb,1e15,3.5\n",
    )
    .unwrap();
    let rs = read_csv(&p).unwrap();
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0].n_trainable, None);
    assert_eq!(rs[0].points[1].loss, 3.0);
    assert!(parse_csv("run,compute,loss\na,x,3\n").is_err());
    assert!(parse_csv("run,loss\na,3\n").is_err());
    assert!(parse_csv("run,compute,loss\na,1\n").is_err());
    let _ = std::fs::remove_dir_all(&root);
}
