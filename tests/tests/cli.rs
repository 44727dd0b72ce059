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

#[tokio::test]
async fn webhook_endpoints_are_managed_from_the_command_line() {
    let mut env = TestEnv::new("cli-endpoints").await;
    env.start_producer().await;
    let url = format!("http://{}", env.producer.as_ref().expect("producer").addr);
    let key = [
        ("FLOTILLA_API_KEY", ALPHA_KEY),
        ("FLOTILLA_URL", url.as_str()),
    ];
    let run = |args: &[&str]| {
        let (code, out, err) = flotilla(args, &key);
        (
            code,
            serde_json::from_str::<Value>(out.trim()).unwrap_or(Value::Null),
            err,
        )
    };

    let (code, created, err) = run(&[
        "webhook",
        "endpoints",
        "create",
        "http://127.0.0.1:9/hooks",
        "--events",
        "job.succeeded,job.failed",
    ]);
    assert_eq!(code, 0, "{err}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(created["secret"]
        .as_str()
        .expect("secret")
        .starts_with("whsec_"));
    assert_eq!(
        created["events"],
        serde_json::json!(["job.succeeded", "job.failed"])
    );

    let (code, rotated, _) = run(&["webhook", "endpoints", "rotate", &id]);
    assert_eq!(code, 0);
    let (_, secret, _) = run(&["webhook", "endpoints", "secret", &id]);
    assert_eq!(secret["secret"], rotated["secret"]);
    let (_, off, _) = run(&["webhook", "endpoints", "disable", &id]);
    assert_eq!(off["enabled"], false);
    let (_, list, _) = run(&["webhook", "endpoints", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (_, on, _) = run(&["webhook", "endpoints", "enable", &id]);
    assert_eq!(on["enabled"], true);
    let (code, replayed, err) = run(&["webhook", "replay", "--since", "2026-01-01T00:00:00Z"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(replayed["replayed"], 0);

    // Bad input: a non-zero exit with the reason, nothing changed.
    let (code, _, err) = run(&[
        "webhook",
        "endpoints",
        "create",
        "http://h/x",
        "--events",
        "job.done",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("job.done"), "{err}");
    let (code, _, err) = run(&["webhook", "endpoints", "show", "../admin"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a webhook endpoint id"), "{err}");
    let (code, _, err) = run(&["webhook", "replay"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run(&["webhook", "endpoints", "delete", &id]);
    assert_eq!(code, 0);
    let (code, _, err) = run(&["webhook", "endpoints", "show", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
}
