//! Prometheus metrics after a known sequence of jobs: exact counts and histogram counts.

use std::time::Duration;

use flotilla_producer::cli::input::read_file;
use flotilla_shared::job::{JobRequest, JobStatus};
use flotilla_tests::{
    eventually, job, metric, scrape, submit_id, EnvOptions, TestEnv, TestReceiver,
};
use serde_json::json;

#[tokio::test]
async fn metrics_count_a_known_sequence_of_jobs_exactly() {
    let opts = EnvOptions {
        jobs_toml: "lease_s = 3\nretry_tiers_s = [1]\nretry_base_ms = 100\nmax_attempts = 2\n"
            .into(),
        ..EnvOptions::default()
    };
    let mut env = TestEnv::with_options("metrics", opts).await;
    let client = env.start_producer().await;
    let w = env.start_worker(&["--concurrency", "4"]).await;
    let receiver = TestReceiver::start(0).await;

    let mut ids = Vec::new();
    for text in ["great", "awful", "fine", "love it"] {
        ids.push(submit_id(&client, &job("sentiment", json!({"text": text}), None)).await);
    }
    let failing = JobRequest {
        params: Some(json!({"fail_rate": 1.0})),
        ..job("sim", json!({}), None)
    };
    ids.push(submit_id(&client, &failing).await);
    ids.push(submit_id(&client, &failing).await);
    let hooked = job(
        "tokens",
        json!({"text": "one two three"}),
        Some(receiver.hook_url()),
    );
    let tokens_id = submit_id(&client, &hooked).await;
    ids.push(tokens_id.clone());
    for id in &ids {
        client
            .wait(id, Duration::from_secs(30))
            .await
            .expect("ends");
    }
    let tokens_job = client.get(&tokens_id).await.expect("get");
    let n_tokens = tokens_job.usage["input_tokens"]
        .as_f64()
        .expect("input_tokens");
    let sim_job = client.get(&ids[4]).await.expect("get");
    assert_eq!(sim_job.status, JobStatus::Failed);
    let kind = sim_job.error.expect("error").kind.as_str();

    let worker = env.workers[w].addr;
    // The webhook's final outcome is counted after the receiver answered.
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &scrape(worker).await,
                "flotilla_webhook_deliveries_total",
                &[("outcome", "delivered")],
            ) == 1.0
        })
        .await
    );
    let text = scrape(worker).await;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    let sentiment = [
        ("model", "sentiment"),
        ("tenant", "alpha"),
        ("pool", "default"),
    ];
    assert_eq!(
        m(
            "flotilla_jobs_completed_total",
            &[sentiment.as_slice(), &[("outcome", "succeeded")]].concat()
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        m(
            "flotilla_jobs_completed_total",
            &[("model", "sim"), ("outcome", "failed")]
        ),
        2.0
    );
    assert_eq!(
        m(
            "flotilla_jobs_failed_total",
            &[("model", "sim"), ("kind", kind)]
        ),
        2.0
    );
    // Each failing job was retried once (max_attempts = 2) and waited in the queue once.
    assert_eq!(m("flotilla_jobs_retried_total", &[("model", "sim")]), 2.0);
    assert_eq!(
        m("flotilla_job_queue_wait_seconds_count", &[("model", "sim")]),
        2.0
    );
    assert_eq!(
        m(
            "flotilla_job_queue_wait_seconds_count",
            &[("model", "sentiment")]
        ),
        4.0
    );
    assert_eq!(
        m(
            "flotilla_job_end_to_end_seconds_count",
            &[("model", "sentiment"), ("outcome", "succeeded")]
        ),
        4.0
    );
    for stage in ["validate", "preprocess", "infer", "postprocess"] {
        assert_eq!(
            m(
                "flotilla_job_stage_seconds_count",
                &[("model", "sentiment"), ("stage", stage)]
            ),
            4.0,
            "{stage}"
        );
    }
    assert_eq!(
        m(
            "flotilla_tokens_total",
            &[("model", "tokens"), ("direction", "input")]
        ),
        n_tokens
    );
    assert_eq!(
        m(
            "flotilla_webhook_attempts_total",
            &[("status_class", "2xx")]
        ),
        1.0
    );
    assert_eq!(
        m("flotilla_webhook_attempt_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(m("flotilla_jobs_in_flight", &[("pool", "default")]), 0.0);
    assert_eq!(m("flotilla_worker_capacity", &[("pool", "default")]), 4.0);

    let producer = env.producer.as_ref().expect("producer").addr;
    let text = scrape(producer).await;
    let p = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(
        p(
            "flotilla_jobs_submitted_total",
            &[("model", "sentiment"), ("tenant", "alpha")]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(p("flotilla_jobs_submitted_total", &[("model", "sim")]), 2.0);
    assert_eq!(
        p("flotilla_jobs_submitted_total", &[("model", "tokens")]),
        1.0
    );
    assert_eq!(
        p(
            "flotilla_api_requests_total",
            &[("route", "/v1/jobs"), ("method", "POST"), ("status", "202")]
        ),
        7.0
    );
    assert_eq!(
        p(
            "flotilla_api_request_duration_seconds_count",
            &[("route", "/v1/jobs"), ("method", "POST")]
        ),
        7.0
    );
    assert!(
        p(
            "flotilla_api_requests_total",
            &[
                ("route", "/v1/jobs/{id}"),
                ("method", "GET"),
                ("status", "200")
            ]
        ) >= 7.0
    );
}

/// The bundled UCI review sentences with their dataset labels (1 positive, 0 negative), read
/// the way `flotilla run` reads them.
fn reviews() -> Vec<(String, u8)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sentiment");
    ["amazon_cells_labelled.txt", "yelp_labelled.txt"]
        .iter()
        .flat_map(|f| read_file(&dir.join(f), "text,label").expect("bundled data"))
        .map(|r| {
            let text = r.input["text"].as_str().unwrap_or_default().to_owned();
            (text, u8::from(r.label.as_deref() == Some("1")))
        })
        .collect()
}

async fn run_all(client: &flotilla_producer::Client, texts: &[&String]) {
    let mut ids = Vec::new();
    for t in texts {
        ids.push(submit_id(client, &job("sentiment", json!({"text": t}), None)).await);
    }
    for id in &ids {
        let j = client
            .wait(id, Duration::from_secs(60))
            .await
            .expect("ends");
        assert_eq!(j.status, JobStatus::Succeeded);
    }
}

#[tokio::test]
async fn drift_psi_crosses_the_threshold_when_the_input_mix_changes() {
    let opts = EnvOptions {
        jobs_toml: "lease_s = 3\n\n[drift]\nbaseline_size = 300\nbucket_s = 1\nwindow_s = 120\n\
                    min_recent = 50\nflush_ms = 200\nthreshold = 0.2\n"
            .into(),
        ..EnvOptions::default()
    };
    let mut env = TestEnv::with_options("drift", opts).await;
    let client = env.start_producer().await;
    let w = env.start_worker(&["--concurrency", "8"]).await;
    let rows = reviews();
    let report = || async {
        let url = format!(
            "http://{}/v1/models/sentiment/drift",
            env.producer.as_ref().expect("producer").addr
        );
        reqwest::Client::new()
            .get(url)
            .bearer_auth(flotilla_tests::ALPHA_KEY)
            .send()
            .await
            .expect("drift")
            .json::<serde_json::Value>()
            .await
            .expect("json")
    };
    let total = |v: &serde_json::Value, k: &str| -> u64 {
        v[k].as_object()
            .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0)
    };

    // Baseline: 300 reviews of the usual mix (every 4th line of both files).
    let mixed: Vec<&String> = rows.iter().step_by(4).map(|(t, _)| t).collect();
    run_all(&client, &mixed[..300]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            total(&report().await, "baseline") == 300
        })
        .await,
        "{}",
        report().await
    );
    // The same mix again: small PSI.
    let more: Vec<&String> = rows
        .iter()
        .skip(2)
        .step_by(4)
        .map(|(t, _)| t)
        .take(100)
        .collect();
    run_all(&client, &more).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            total(&report().await, "recent") == 100
        })
        .await
    );
    let steady = report().await;
    let steady_psi = steady["psi"].as_f64().expect("psi");
    assert!(steady_psi < 0.1, "{steady}");
    assert_eq!(steady["drifting"], false);

    // Then only the reviews the dataset calls negative: the output mix shifts.
    let negative: Vec<&String> = rows
        .iter()
        .filter(|(_, l)| *l == 0)
        .map(|(t, _)| t)
        .take(400)
        .collect();
    run_all(&client, &negative).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            total(&report().await, "recent") == 500
        })
        .await,
        "{}",
        report().await
    );
    let shifted = report().await;
    assert_eq!(shifted["drifting"], true, "{shifted}");
    let worker = env.workers[w].addr;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &scrape(worker).await,
                "flotilla_drift_psi",
                &[("model", "sentiment")],
            ) > 0.2
        })
        .await,
        "{}",
        scrape(worker).await
    );
    eprintln!(
        "drift: steady PSI {steady_psi:.4}, shifted PSI {}",
        shifted["psi"]
    );
    assert!(env.logs().contains("drifted from the baseline"));

    // An admin reset forgets both windows: the next outputs form a new baseline.
    let addr = env.producer.as_ref().expect("producer").addr;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/models/sentiment/drift/reset"))
        .bearer_auth(flotilla_tests::ALPHA_KEY)
        .send()
        .await
        .expect("reset");
    assert_eq!(resp.status(), 200);
    let after = report().await;
    assert_eq!(
        (total(&after, "baseline"), total(&after, "recent")),
        (0, 0),
        "{after}"
    );
    assert_eq!(after["psi"], serde_json::Value::Null);
}
