//! `POST /v1/jobs/batch` and the claim that trusts a message only when the record's
//! envelope hash vouches for it.

use std::time::Duration;

use flotilla_shared::{
    amqp::{headers, json_properties, Publisher},
    job::{JobRequest, JobStatus},
    names::HEADER_ATTEMPT,
};
use flotilla_tests::{TestEnv, ALPHA_KEY};
use lapin::options::QueuePurgeOptions;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn tokens(text: &str) -> JobRequest {
    flotilla_tests::job("tokens", json!({"text": text}), None)
}

#[tokio::test]
async fn a_batch_answers_each_job_in_order_and_queues_each_new_job_once() {
    let mut env = TestEnv::new("batch").await;
    let client = env.start_producer().await;
    let mut bad = tokens("bad");
    bad.model = "no-such-model".into();
    let jobs = vec![
        (tokens("one two"), Some("k1".to_owned())),
        (tokens("three"), Some("k2".to_owned())),
        (bad, Some("k3".to_owned())),
        (tokens("four five six"), None),
        // The key of the first job with the same body: that job, answered 200.
        (tokens("one two"), Some("k1".to_owned())),
        // The key of the second job with another body: a conflict for this job alone.
        (tokens("other"), Some("k2".to_owned())),
    ];
    let answers = client.submit_batch(&jobs).await.expect("batch accepted");
    assert_eq!(answers.len(), 6);
    let ok = |i: usize| answers[i].as_ref().expect("accepted job");
    assert!(ok(0).created && ok(1).created && ok(3).created);
    let err = answers[2].as_ref().expect_err("unknown model");
    assert_eq!(err.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert!(
        err.to_string().contains("jobs[2]: model: unknown model"),
        "{err}"
    );
    assert!(!ok(4).created, "a repeated key answers 200");
    assert_eq!(ok(4).response.id, ok(0).response.id);
    let conflict = answers[5].as_ref().expect_err("conflict");
    assert_eq!(conflict.status(), Some(StatusCode::CONFLICT));
    let queue = env.names.jobs_queue("default");
    assert_eq!(env.queue_len(&queue).await, 3, "one message per new job");

    // The same batch again: every keyed job is the one already queued, nothing new.
    let again = client
        .submit_batch(&jobs[..2])
        .await
        .expect("batch accepted");
    for (a, b) in again.iter().zip(&answers[..2]) {
        let (a, b) = (a.as_ref().expect("repeat"), b.as_ref().expect("first"));
        assert!(!a.created);
        assert_eq!(a.response.id, b.response.id);
    }
    assert_eq!(env.queue_len(&queue).await, 3);

    // The worker runs them: each ends succeeded with its own input.
    env.start_worker(&[]).await;
    for (i, text) in [(0, "one two"), (1, "three"), (3, "four five six")] {
        let job = client
            .wait(&ok(i).response.id, Duration::from_secs(30))
            .await
            .expect("job ends");
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.input, json!({"text": text}));
        assert_eq!(job.attempts, 1);
    }
}

#[tokio::test]
async fn a_batch_refused_as_a_whole_says_why() {
    let mut env = TestEnv::new("batchbad").await;
    let client = env.start_producer().await;
    let base = client.base_url().to_owned();
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("{base}/v1/jobs/batch"))
            .bearer_auth(ALPHA_KEY)
            .json(&body)
            .send()
    };
    let cases = [
        (json!({"jobs": []}), 422, "jobs: empty list"),
        (json!({"jobs": {}}), 422, "jobs: expected"),
        (json!({"jobs": [], "x": 1}), 422, "x: unknown field"),
        (
            json!({"jobs": vec![json!({"model": "tokens", "input": {"text": "a"}}); 1001]}),
            413,
            "more than jobs.max_batch_jobs = 1000",
        ),
    ];
    for (body, status, reason) in cases {
        let resp = post(body).await.expect("answer");
        assert_eq!(resp.status().as_u16(), status, "{reason}");
        let v: Value = resp.json().await.expect("json");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(reason),
            "{message:?} should say {reason:?}"
        );
    }
    let bad_key =
        post(json!({"jobs": [{"model": "tokens", "input": {"text": "a"}, "idempotency_key": 7}]}))
            .await
            .expect("answer");
    assert_eq!(bad_key.status(), StatusCode::OK);
    let v: Value = bad_key.json().await.expect("json");
    assert_eq!(v["jobs"][0]["code"], 422);
    assert_eq!(
        v["jobs"][0]["error"]["message"],
        "jobs[0].idempotency_key: expected 1-255 visible ASCII characters"
    );
    // One key per job, not one for the batch.
    let header_key = http
        .post(format!("{base}/v1/jobs/batch"))
        .bearer_auth(ALPHA_KEY)
        .header("Idempotency-Key", "whole-batch")
        .json(&json!({"jobs": [{"model": "tokens", "input": {"text": "a"}}]}))
        .send()
        .await
        .expect("answer");
    assert_eq!(header_key.status(), StatusCode::BAD_REQUEST);
    // Each job keeps the single-job limits: size and nesting.
    let big = "x".repeat(1_100_000);
    let mut deep = json!("leaf");
    for _ in 0..70 {
        deep = json!({ "d": deep });
    }
    let resp = post(json!({"jobs": [
        {"model": "sim", "input": {"blob": big}},
        {"model": "sim", "input": deep.clone()},
        {"model": "tokens", "input": {"text": "fine"}, "idempotency_key": ""},
    ]}))
    .await
    .expect("answer");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["jobs"][0]["code"], 413, "{v}");
    assert_eq!(v["jobs"][1]["code"], 422, "{v}");
    assert!(v["jobs"][1]["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("jobs[1]: input, params, metadata: nested too deep")));
    assert_eq!(v["jobs"][2]["code"], 422, "{v}");
    let single = client
        .submit(&flotilla_tests::job("sim", deep, None), None)
        .await
        .expect_err("too deep");
    assert_eq!(single.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(env.queue_len(&env.names.jobs_queue("default")).await, 0);
}

#[tokio::test]
async fn a_message_that_differs_from_its_record_runs_what_the_record_says() {
    let mut env = TestEnv::new("tamper").await;
    let client = env.start_producer().await;
    let id = client
        .submit(&tokens("the stored text has six tokens"), None)
        .await
        .expect("submit")
        .response
        .id;
    // Replace the queued message by one naming the same job with another input.
    let queue = env.names.jobs_queue("default");
    env.channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    let stored = env.store.get(&id).await.expect("redis").expect("record");
    let mut forged = stored.to_envelope();
    forged.input = json!({"text": "forged"});
    let publisher = Publisher::open(&env.amqp, Duration::from_secs(5))
        .await
        .expect("publisher");
    publisher
        .publish(
            &env.names.jobs_exchange(),
            "default",
            &serde_json::to_vec(&forged).expect("json"),
            json_properties(&id, headers([], [(HEADER_ATTEMPT, 0)])),
        )
        .await
        .expect("published");

    env.start_worker(&[]).await;
    let job = client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("job ends");
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.input, json!({"text": "the stored text has six tokens"}));
    // The same text submitted normally (its message vouched for by the record) gives the
    // same output; the forged text would have given another.
    let control = run_to_end(&client, "the stored text has six tokens").await;
    assert_eq!(job.output, control.output);
    let forged_run = run_to_end(&client, "forged").await;
    assert_ne!(
        job.output, forged_run.output,
        "the forged input would have given another output"
    );
}

/// Submits a `tokens` job for `text` and waits for its end.
async fn run_to_end(client: &flotilla_producer::Client, text: &str) -> flotilla_shared::job::Job {
    let id = flotilla_tests::submit_id(client, &tokens(text)).await;
    client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("job ends")
}
