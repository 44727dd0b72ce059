//! The path of one job: submit → RabbitMQ → worker → Redis → signed webhook.

use std::time::Duration;

use flotilla_shared::job::{event_id, EventType, JobRequest, JobStatus};
use flotilla_tests::{by_webhook_id, eventually, job, TestEnv, TestReceiver};
use serde_json::json;

fn request(model: &str, input: serde_json::Value, hook: Option<String>) -> JobRequest {
    JobRequest {
        metadata: Some(json!({"case": "flow"})),
        ..job(model, input, hook)
    }
}

#[tokio::test]
async fn job_result_and_signed_webhook_equal_the_job_resource() {
    let mut env = TestEnv::new("flow").await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let receiver = TestReceiver::start(0).await;

    let sub = client
        .submit(
            &request(
                "sentiment",
                json!({"text": "I love this phone, the battery is great!"}),
                Some(receiver.hook_url()),
            ),
            None,
        )
        .await
        .expect("submit");
    assert!(sub.created);
    assert_eq!(sub.response.status, JobStatus::Queued);
    assert_eq!(
        sub.response.urls.get,
        format!("/v1/jobs/{}", sub.response.id)
    );
    let id = sub.response.id.clone();

    let job = client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("job ends");
    assert_eq!(job.status, JobStatus::Succeeded, "{}", env.logs());
    let out = job.output.as_ref().expect("output");
    assert_eq!(out["label"], "positive");
    assert!(out["compound"].as_f64().expect("compound") >= 0.05);
    assert_eq!(job.attempts, 1);
    assert!(job.error.is_none());
    assert_eq!(job.metadata["case"], "flow");
    assert!(job.usage["input_chars"].as_u64().expect("usage") > 10);
    assert!(job.started_at.is_some() && job.completed_at.is_some());
    for t in [
        job.timings.queue_ms,
        job.timings.validate_ms,
        job.timings.preprocess_ms,
        job.timings.infer_ms,
        job.timings.postprocess_ms,
        job.timings.total_ms,
    ] {
        assert!(t.is_some_and(|ms| ms >= 0.0), "{:?}", job.timings);
    }

    assert!(
        eventually(Duration::from_secs(15), || async {
            !receiver.hits_for(&id).is_empty()
        })
        .await,
        "no webhook; logs:\n{}",
        env.logs()
    );
    let hits = receiver.hits_for(&id);
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0];
    assert!(hit.verified, "signature must verify with the tenant secret");
    assert_eq!(hit.webhook_id, event_id(&id, EventType::Succeeded));
    assert_eq!(hit.body["type"], "job.succeeded");
    // The resource also reports how its own webhook went; the event it reports on cannot.
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.get_raw(&id).await.expect("get")["webhook_status"] == "delivered"
        })
        .await
    );
    let mut resource = client.get_raw(&id).await.expect("get");
    resource
        .as_object_mut()
        .expect("object")
        .remove("webhook_status");
    assert_eq!(
        hit.body["data"], resource,
        "webhook data must equal GET /v1/jobs/{{id}} (without webhook_status)"
    );

    let log = client.deliveries(&id).await.expect("deliveries");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["ok"], true);
    assert_eq!(log[0]["status"], 204);

    // A replay sends the same event again, with the same webhook-id and body.
    let replayed = client.replay_event(&id).await.expect("replay");
    assert_eq!(
        replayed["event_id"],
        event_id(&id, EventType::Succeeded).as_str()
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            receiver.hits_for(&id).len() == 2
        })
        .await
    );
    let hits = receiver.hits_for(&id);
    assert_eq!(hits[1].webhook_id, hits[0].webhook_id);
    assert!(hits[1].verified);
    assert_eq!(hits[1].body, hits[0].body);
}

#[tokio::test]
async fn builtin_models_answer_known_values() {
    let mut env = TestEnv::new("models").await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let cases = [
        (
            "tokens",
            json!({"text": "hello world"}),
            json!({"tokens": 2, "encoding": "cl100k_base"}),
        ),
        (
            "tokens",
            json!({"text": "hello world", "encoding": "o200k_base"}),
            json!({"tokens": 2, "encoding": "o200k_base"}),
        ),
    ];
    for (model, input, want) in cases {
        let id = client
            .submit(&request(model, input, None), None)
            .await
            .expect("submit")
            .response
            .id;
        let job = client
            .wait(&id, Duration::from_secs(30))
            .await
            .expect("wait");
        assert_eq!(job.output.as_ref(), Some(&want), "{model}");
        assert_eq!(job.usage["input_tokens"], 2);
    }
    let id = client
        .submit(
            &request(
                "langid",
                json!({"text": "Je voudrais une tasse de café, s'il vous plaît."}),
                None,
            ),
            None,
        )
        .await
        .expect("submit")
        .response
        .id;
    let job = client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("wait");
    let out = job.output.expect("output");
    assert_eq!(out["language"], "fra");
    assert!(out["confidence"].as_f64().expect("confidence") > 0.5);
    let id = client
        .submit(
            &request(
                "sentiment",
                json!({"text": "Horrible. It broke after a day and support was useless."}),
                None,
            ),
            None,
        )
        .await
        .expect("submit")
        .response
        .id;
    let job = client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("wait");
    assert_eq!(job.output.expect("output")["label"], "negative");
}

#[tokio::test]
async fn webhook_that_fails_twice_is_retried_with_the_same_webhook_id() {
    let mut env = TestEnv::new("hookretry").await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let receiver = TestReceiver::start(2).await;
    let id = client
        .submit(
            &request(
                "tokens",
                json!({"text": "retry me"}),
                Some(receiver.hook_url()),
            ),
            None,
        )
        .await
        .expect("submit")
        .response
        .id;
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver.hits_for(&id).iter().any(|h| h.answered == 204)
        })
        .await,
        "never delivered; logs:\n{}",
        env.logs()
    );
    let hits = receiver.hits_for(&id);
    assert_eq!(hits.len(), 3, "two 503s then one 204: {hits:?}");
    assert_eq!(
        hits.iter().map(|h| h.answered).collect::<Vec<_>>(),
        vec![503, 503, 204]
    );
    let ids = by_webhook_id(&hits);
    assert_eq!(ids.len(), 1, "same webhook-id on every attempt");
    assert!(hits.iter().all(|h| h.verified));
    // The delivery log records every attempt, the last one successful.
    let ok = eventually(Duration::from_secs(5), || async {
        client
            .deliveries(&id)
            .await
            .map(|l| l.len() == 3)
            .unwrap_or(false)
    })
    .await;
    assert!(ok);
    let log = client.deliveries(&id).await.expect("log");
    assert_eq!(
        log.iter()
            .map(|e| e["status"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>(),
        vec![503, 503, 204]
    );
    assert_eq!(
        log.iter()
            .map(|e| e["attempt"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}
