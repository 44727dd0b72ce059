//! Prometheus metrics after a known sequence of jobs: exact counts and histogram counts.

use std::time::Duration;

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
