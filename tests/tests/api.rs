//! The API's contract: idempotency, auth and tenant isolation, validation.

use flotilla_shared::job::{JobRequest, JobStatus};
use flotilla_tests::{TestEnv, ALPHA_KEY, BETA_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn tokens(text: &str) -> JobRequest {
    JobRequest {
        model: "tokens".into(),
        input: json!({"text": text}),
        params: None,
        webhook: None,
        metadata: None,
        timeout_s: None,
        deadline: None,
    }
}

#[tokio::test]
async fn idempotency_key_same_body_same_job_different_body_conflict() {
    let mut env = TestEnv::new("idem").await;
    let client = env.start_producer().await;
    let first = client
        .submit(&tokens("one"), Some("key-1"))
        .await
        .expect("first");
    assert!(first.created);
    let again = client
        .submit(&tokens("one"), Some("key-1"))
        .await
        .expect("again");
    assert!(!again.created, "a repeat answers 200");
    assert_eq!(again.response.id, first.response.id);
    let err = client
        .submit(&tokens("two"), Some("key-1"))
        .await
        .expect_err("conflict");
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    // Other tenants have their own key space.
    let beta = env
        .client(BETA_KEY)
        .submit(&tokens("one"), Some("key-1"))
        .await
        .expect("beta");
    assert_ne!(beta.response.id, first.response.id);
    assert_eq!(env.queue_len(&env.names.jobs_queue("default")).await, 2);
}

#[tokio::test]
async fn twenty_concurrent_submits_with_one_key_make_one_job_and_one_message() {
    let mut env = TestEnv::new("idem20").await;
    let client = env.start_producer().await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.submit(&tokens("same"), Some("burst")).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let s = t.await.expect("task").expect("submit");
        created += usize::from(s.created);
        ids.insert(s.response.id);
    }
    assert_eq!(ids.len(), 1, "one job id for all 20");
    assert_eq!(created, 1, "exactly one 202");
    assert_eq!(
        env.queue_len(&env.names.jobs_queue("default")).await,
        1,
        "exactly one message"
    );
}

#[tokio::test]
async fn auth_and_tenant_isolation() {
    let mut env = TestEnv::new("auth").await;
    let alpha = env.start_producer().await;
    let base = format!("http://{}", env.producer.as_ref().expect("producer").addr);
    let http = reqwest::Client::new();

    let resp = http
        .post(format!("{base}/v1/jobs"))
        .json(&tokens("x"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["type"], "unauthorized");
    let resp = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth("not-a-key")
        .json(&tokens("x"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let id = alpha
        .submit(&tokens("mine"), None)
        .await
        .expect("submit")
        .response
        .id;
    let beta = env.client(BETA_KEY);
    let err = beta.get(&id).await.expect_err("other tenant");
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(
        env.client(ALPHA_KEY).get(&id).await.expect("own").status,
        JobStatus::Queued
    );
    let err = alpha.get("not-a-uuid").await.expect_err("bad id");
    assert!(
        matches!(err, flotilla_producer::ClientError::InvalidId(_)),
        "{err}"
    );
    // Any spelling of the UUID, any case of the auth scheme.
    let resp = http
        .get(format!("{base}/v1/jobs/{}", id.to_uppercase()))
        .header("authorization", format!("BEARER {ALPHA_KEY}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .delete(format!("{base}/v1/jobs/{id}"))
        .bearer_auth(ALPHA_KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["type"], "method_not_allowed");
}

#[tokio::test]
async fn invalid_requests_get_a_named_4xx_and_queue_nothing() {
    let mut env = TestEnv::new("invalid").await;
    let _ = env.start_producer().await;
    let base = format!("http://{}", env.producer.as_ref().expect("producer").addr);
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        http.post(format!("{base}/v1/jobs"))
            .bearer_auth(ALPHA_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, StatusCode, &str, &str)> = vec![
        (br#"{"model":"gpt-17","input":{"text":"x"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "unknown model"),
        (br#"{"model":"sentiment","input":{"txt":"x"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "input.text"),
        (br#"{"model":"sentiment","input":"x"}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "input: expected an object"),
        (br#"{"model":"tokens","input":{"text":"x","encoding":"gpt2"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "input.encoding"),
        (br#"{"model":"sentiment","input":{"text":"x"},"webhok":{}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "webhok"),
        (br#"{"model":"sentiment","#.to_vec(), StatusCode::BAD_REQUEST, "invalid_json", "not valid JSON"),
        (br#"{"model":"sim","input":{},"params":{"crash":true}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "params.crash"),
        (br#"{"model":"sentiment","input":{"text":"x"},"webhook":{"url":"ftp://example.com/h"}}"#.to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "webhook.url"),
    ];
    let more: Vec<(Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            br#"["sentiment",{"text":"x"}]"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "expected a JSON object",
        ),
        (
            br#"{"model":"tokens","input":{"text":"x"},"timeout_s":-1}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "timeout_s",
        ),
        (
            br#"{"model":"tokens","input":{"text":"x"},"deadline":"tomorrow"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "deadline",
        ),
        (
            br#"{"model":1,"input":{"text":"x"}}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "model",
        ),
    ];
    for (body, status, kind, needle) in cases.into_iter().chain(more) {
        let resp = post(body.clone()).await.expect("send");
        assert_eq!(resp.status(), status, "{}", String::from_utf8_lossy(&body));
        let v: Value = resp.json().await.expect("json error body");
        assert_eq!(v["error"]["type"], kind);
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{msg:?} should name {needle:?}");
    }
    // Over the 1 MiB default limit.
    let big = format!(
        r#"{{"model":"sentiment","input":{{"text":"{}"}}}}"#,
        "a".repeat(1024 * 1024 + 10)
    );
    let resp = post(big.into_bytes()).await.expect("send");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = resp.json().await.expect("json error body");
    assert_eq!(v["error"]["type"], "payload_too_large");
    let resp = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(ALPHA_KEY)
        .header("content-type", "application/jsonx")
        .body(r#"{"model":"tokens","input":{"text":"x"}}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A beta job with a webhook: beta has no signing secret.
    let resp = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(BETA_KEY)
        .json(&json!({"model":"tokens","input":{"text":"x"},"webhook":{"url":"http://127.0.0.1:9/h"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(
        env.queue_len(&env.names.jobs_queue("default")).await,
        0,
        "nothing queued"
    );
    let removed = env.store.delete_namespace().await.expect("scan");
    assert_eq!(removed, 0, "no job record written for refused requests");
}

/// A publish the broker returns (no queue bound for the route) is a 503 that leaves no job
/// record behind and frees the idempotency key for a retry.
#[tokio::test]
async fn an_unroutable_publish_is_a_503_without_an_orphan() {
    let mut env = TestEnv::new("unroutable").await;
    let client = env.start_producer().await;
    let (queue, exchange) = (env.names.jobs_queue("default"), env.names.jobs_exchange());
    env.channel
        .queue_unbind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "default".into(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("unbind");
    let err = client
        .submit(&tokens("lost?"), Some("k-503"))
        .await
        .expect_err("503");
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        env.store.delete_namespace().await.expect("scan"),
        0,
        "no record, no idempotency key"
    );

    env.channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "default".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("bind");
    let ok = client
        .submit(&tokens("lost?"), Some("k-503"))
        .await
        .expect("retry accepted");
    assert!(ok.created, "the key was freed: a new job");
    assert_eq!(env.queue_len(&queue).await, 1);
}
