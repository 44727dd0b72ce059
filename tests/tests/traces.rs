//! W3C trace context: one trace id from the HTTP request through the worker to every webhook
//! request, and the same id in the spans exported over OTLP.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, routing::post, Router};
use flotilla_shared::trace::TraceParent;
use flotilla_tests::{eventually, sim_job, TestEnv, TestReceiver, ALPHA_KEY};
use serde_json::Value;

async fn submit_traced(env: &TestEnv, body: &Value, traceparent: Option<&str>) -> String {
    let addr = env.producer.as_ref().expect("producer").addr;
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/v1/jobs"))
        .bearer_auth(ALPHA_KEY)
        .json(body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = req.send().await.expect("submit");
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.expect("json");
    v["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn one_trace_id_from_the_request_through_the_worker_to_every_webhook_attempt() {
    let mut env = TestEnv::new("trace").await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    // The first delivery fails: the retry must stay in the same trace.
    let receiver = TestReceiver::start(1).await;
    let body = serde_json::to_value(sim_job(0, Some(receiver.hook_url()))).expect("json");

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let id = submit_traced(&env, &body, Some(caller)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver.hits_for(&id).len() == 2
        })
        .await,
        "logs:\n{}",
        env.logs()
    );
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.trace_id.as_deref(), Some(trace));
    let hits = receiver.hits_for(&id);
    let contexts: Vec<TraceParent> = hits
        .iter()
        .map(|h| TraceParent::parse(&h.traceparent).expect("valid traceparent on the webhook"))
        .collect();
    assert!(
        contexts.iter().all(|c| c.trace_id_hex() == trace),
        "{contexts:?}"
    );
    // One span per attempt, none of them the caller's.
    assert_ne!(contexts[0].span_id, contexts[1].span_id);
    assert!(contexts.iter().all(|c| c.to_string() != caller));
    assert_eq!(hits[0].body["data"]["trace_id"], trace);
    // The producer's span and the worker's attempt span log the same id.
    let producer_log = env.producer.as_ref().expect("producer").log_text();
    assert!(
        producer_log.contains(&format!("submit{{trace_id={trace}}}")),
        "{producer_log}"
    );
    let worker_log = env.workers[0].log_text();
    assert!(
        worker_log.contains(&format!("trace_id={trace}")),
        "{worker_log}"
    );

    // No header, or a malformed one: the job starts its own trace (never a 4xx).
    for header in [None, Some("00-zz-00f067aa0ba902b7-01")] {
        let id = submit_traced(&env, &body, header).await;
        assert!(
            eventually(Duration::from_secs(20), || async {
                receiver.hits_for(&id).iter().any(|h| h.answered == 204)
            })
            .await
        );
        let own = client
            .get(&id)
            .await
            .expect("get")
            .trace_id
            .expect("trace id");
        assert_eq!(own.len(), 32);
        assert_ne!(own, trace);
        let hit = &receiver.hits_for(&id)[0];
        assert_eq!(
            TraceParent::parse(&hit.traceparent)
                .expect("valid")
                .trace_id_hex(),
            own
        );
    }
}

type Bodies = Arc<Mutex<Vec<Bytes>>>;

async fn collect(State(bodies): State<Bodies>, body: Bytes) -> &'static str {
    bodies.lock().expect("bodies").push(body);
    ""
}

#[tokio::test]
async fn spans_exported_over_otlp_carry_the_job_trace_id() {
    // A stand-in OTLP/HTTP collector that keeps every POST /v1/traces body (protobuf).
    let bodies: Bodies = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(bodies.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];

    let mut env = TestEnv::new("otlp").await;
    env.start_producer_with_env(&otel).await;
    env.spawn_worker_with_env(&[], &otel);
    let receiver = TestReceiver::start(0).await;
    let body = serde_json::to_value(sim_job(0, Some(receiver.hook_url()))).expect("json");
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let id = submit_traced(&env, &body, Some(caller)).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            !receiver.hits_for(&id).is_empty()
        })
        .await,
        "logs:\n{}",
        env.logs()
    );
    let trace = TraceParent::parse(caller).expect("valid").trace_id;
    // Protobuf keeps ids as raw bytes: look for the 16 trace-id bytes and each service name.
    let exported_by = |service: &'static str| {
        let bodies = bodies.clone();
        async move {
            bodies.lock().expect("bodies").iter().any(|b| {
                let has = |needle: &[u8]| b.windows(needle.len()).any(|w| w == needle);
                has(&trace) && has(service.as_bytes())
            })
        }
    };
    assert!(
        eventually(Duration::from_secs(15), || exported_by("flotilla-producer")).await,
        "no producer span with the trace id among {} exports",
        bodies.lock().expect("bodies").len()
    );
    assert!(
        eventually(Duration::from_secs(15), || exported_by("flotilla-worker")).await,
        "no worker span with the trace id among {} exports",
        bodies.lock().expect("bodies").len()
    );
    // The webhook's traceparent names a span the worker exported.
    let hit = &receiver.hits_for(&id)[0];
    let sent = TraceParent::parse(&hit.traceparent).expect("valid");
    assert_eq!(sent.trace_id, trace);
    assert!(
        eventually(Duration::from_secs(15), || async {
            bodies
                .lock()
                .expect("bodies")
                .iter()
                .any(|b| b.windows(8).any(|w| w == sent.span_id))
        })
        .await,
        "the webhook's parent span was not exported"
    );
}
