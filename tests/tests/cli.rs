//! The `flotilla` command as a user runs it.

use std::process::Command;

use flotilla_tests::{bin, TestEnv, ALPHA_KEY};
use serde_json::Value;

fn flotilla(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin("flotilla"))
        .args(args)
        .env_remove("FLOTILLA_API_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run flotilla");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn webhook_verify_checks_the_standard_webhooks_vector() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let dir = std::env::temp_dir().join(format!("flotilla-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let body = dir.join("body.json");
    std::fs::write(&body, br#"{"test": 2432232314}"#).expect("body");
    let body = body.display().to_string();
    let args = |sig: &'static str| {
        vec![
            "webhook",
            "verify",
            "--id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "--timestamp",
            "1614265330",
            "--signature",
            sig,
            "--body",
            &body,
            "--tolerance-s",
            "999999999",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        flotilla(&a, &[("FLOTILLA_WEBHOOK_SECRET", secret)])
    };
    let (code, out, _) = run(args("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
    assert_eq!((code, out.trim()), (0, "valid"));
    let (code, _, err) = run(args("v1,bm9wZQ=="));
    assert_eq!(code, 1);
    assert!(err.contains("no signature matches"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn run_reports_a_summary_and_refuses_bad_input_with_exit_2() {
    let mut env = TestEnv::new("cli").await;
    env.start_producer().await;
    env.start_worker(&[]).await;
    let url = format!("http://{}", env.producer.as_ref().expect("producer").addr);
    let file = env.dir.join("reviews.txt");
    std::fs::write(
        &file,
        "Great phone, works perfectly.\t1\nTerrible, it broke in a day.\t0\n",
    )
    .expect("file");
    let file = file.display().to_string();
    let key = [
        ("FLOTILLA_API_KEY", ALPHA_KEY),
        ("FLOTILLA_URL", url.as_str()),
    ];

    let (code, out, err) = flotilla(
        &[
            "run",
            &file,
            "--model",
            "sentiment",
            "--json",
            "--no-progress",
        ],
        &key,
    );
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(summary["jobs"], 2);
    assert_eq!(summary["succeeded"], 2);
    assert_eq!(summary["accuracy"], 1.0);
    assert!(summary["latency_ms"]["p99"].as_f64().expect("p99") > 0.0);

    let empty = env.dir.join("empty.txt");
    std::fs::write(&empty, "").expect("file");
    let (code, _, err) = flotilla(
        &["run", &empty.display().to_string(), "--model", "sentiment"],
        &key,
    );
    assert_eq!(code, 2);
    assert!(err.contains("no records"), "{err}");
    let (code, _, err) = flotilla(&["run", "/nonexistent.tsv", "--model", "sentiment"], &key);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent.tsv"), "{err}");
    let (code, _, err) = flotilla(
        &["get", "0192f0c4-8d7e-7a3b-9c1d-2e3f4a5b6c7d"],
        &[("FLOTILLA_URL", url.as_str())],
    );
    assert_eq!(code, 2);
    assert!(err.contains("API key"), "{err}");
    let (code, _, err) = flotilla(&["get", "../../v1/models"], &key);
    assert_eq!(code, 1);
    assert!(err.contains("not a job id"), "{err}");
}
