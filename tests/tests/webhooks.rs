//! Webhook delivery: the durable schedule (S6), status classes, tenant endpoints, rotation,
//! the payload cap, the SSRF guard and replay.

use std::{collections::HashMap, time::Duration};

use chrono::Utc;
use flotilla_producer::client::EndpointAction;
use flotilla_shared::{
    dlq::DlqFilter,
    job::{event_id, EventType, JobRequest, JobStatus, WebhookSpec},
};
use flotilla_tests::{
    eventually, job, sim_job, submit_id, EnvOptions, Hit, Reply, TestEnv, TestReceiver,
    ALPHA_SECRET,
};
use serde_json::{json, Value};

fn opts(webhooks: &str) -> EnvOptions {
    EnvOptions {
        webhooks_toml: format!("tiers_s = [1, 5]\nendpoint_cache_ms = 0\n{webhooks}"),
        ..EnvOptions::default()
    }
}

/// A namespace with the `[webhooks]` lines `webhooks`, a producer and one worker.
async fn fleet(name: &str, webhooks: &str) -> (TestEnv, flotilla_producer::Client) {
    let mut env = TestEnv::with_options(name, opts(webhooks)).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    (env, client)
}

fn replying(status: u16) -> Reply {
    Reply {
        status,
        ..Reply::default()
    }
}

fn hits_by_id(hits: Vec<Hit>) -> HashMap<String, Vec<Hit>> {
    let mut map: HashMap<String, Vec<Hit>> = HashMap::new();
    for h in hits {
        map.entry(h.webhook_id.clone()).or_default().push(h);
    }
    map
}

#[tokio::test]
async fn s6_a_receiver_asking_for_patience_gets_spaced_retries_while_others_are_served() {
    // Retry-After: 120 is clamped to 2 s; the schedule itself would retry after 1 s.
    let mut env = TestEnv::with_options(
        "wh-s6",
        opts("schedule_s = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nretry_after_max_s = 2\nper_endpoint_concurrency = 4\n"),
    )
    .await;
    let client = env.start_producer().await;
    env.start_worker(&["--concurrency", "16"]).await;
    let patient = TestReceiver::start_replying(
        ALPHA_SECRET,
        Reply {
            status: 503,
            retry_after: Some("120".into()),
            delay: Duration::from_millis(20),
        },
    )
    .await;
    let healthy = TestReceiver::start(0).await;

    let mut patient_jobs = Vec::new();
    for _ in 0..200 {
        let sub = client
            .submit(&sim_job(0, Some(patient.hook_url())), None)
            .await
            .expect("submit");
        patient_jobs.push(sub.response.id);
    }
    for _ in 0..50 {
        client
            .submit(&sim_job(0, Some(healthy.hook_url())), None)
            .await
            .expect("submit");
    }

    // The other endpoint gets all its events while the patient one still refuses them.
    assert!(
        eventually(Duration::from_secs(60), || async {
            healthy.delivered_ids().len() == 50
        })
        .await,
        "healthy endpoint starved: {} of 50; logs:\n{}",
        healthy.delivered_ids().len(),
        env.logs()
    );
    assert!(patient.delivered_ids().is_empty());

    // Every event has been retried at least once before the receiver recovers.
    assert!(
        eventually(Duration::from_secs(60), || async {
            let by_id = hits_by_id(patient.hits());
            by_id.len() == 200 && by_id.values().all(|h| h.len() >= 2)
        })
        .await,
        "not every event was retried; logs:\n{}",
        env.logs()
    );
    patient.set_reply(Reply::default());
    assert!(
        eventually(Duration::from_secs(90), || async {
            patient.delivered_ids().len() == 200
        })
        .await,
        "after recovery {} of 200 arrived; logs:\n{}",
        patient.delivered_ids().len(),
        env.logs()
    );

    let by_id = hits_by_id(patient.hits());
    let mut gaps = Vec::new();
    for (id, hits) in &by_id {
        assert!(hits.iter().all(|h| h.verified), "{id}: a bad signature");
        assert!(id.starts_with("evt_") && id.ends_with("_succeeded"), "{id}");
        for pair in hits.windows(2) {
            gaps.push(pair[1].at.duration_since(pair[0].at).as_secs_f64());
        }
    }
    let shortest = gaps.iter().copied().fold(f64::MAX, f64::min);
    let longest = gaps.iter().copied().fold(0.0, f64::max);
    // At least the clamped Retry-After; at most that plus 20% jitter plus a tier's lateness
    // and queueing on this 2-core machine.
    assert!(
        shortest >= 1.95,
        "a retry came after {shortest:.3} s, before Retry-After"
    );
    assert!(longest <= 8.0, "a retry waited {longest:.3} s");
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let spread = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
    eprintln!(
        "s6: {} retries, gap min {shortest:.3} s, mean {mean:.3} s, max {longest:.3} s, σ {spread:.3} s, max in flight {}",
        gaps.len(),
        patient.max_in_flight()
    );
    assert!(
        spread > 0.02,
        "retries arrive in lockstep (σ = {spread:.3} s)"
    );
    // One dispatcher never ran more than its per-endpoint cap against the slow receiver.
    assert!(
        patient.max_in_flight() <= 4,
        "{} at once",
        patient.max_in_flight()
    );

    let job = client.get_raw(&patient_jobs[0]).await.expect("get");
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.get_raw(&patient_jobs[0]).await.expect("get")["webhook_status"] == "delivered"
        })
        .await,
        "{job}"
    );
}

#[tokio::test]
async fn status_classes_decide_between_retry_dead_letter_and_disabling_the_endpoint() {
    let (env, client) = fleet("wh-status", "schedule_s = [0, 1]\n").await;

    let mut receivers = Vec::new();
    for status in [202, 301, 400, 500, 410] {
        let r = TestReceiver::start_replying(ALPHA_SECRET, replying(status)).await;
        let id = submit_id(&client, &sim_job(0, Some(r.hook_url()))).await;
        receivers.push((status, r, id));
    }
    for (status, r, id) in &receivers {
        let want = match status {
            202 | 410 => 1,
            _ => 2,
        };
        assert!(
            eventually(Duration::from_secs(30), || async {
                client
                    .get_raw(id)
                    .await
                    .expect("get")
                    .get("webhook_status")
                    .is_some()
            })
            .await,
            "{status}: no final webhook status; logs:\n{}",
            env.logs()
        );
        let job = client.get_raw(id).await.expect("get");
        let expected = if *status == 202 {
            "delivered"
        } else {
            "failed"
        };
        assert_eq!(job["webhook_status"], expected, "{status}");
        assert_eq!(job["status"], "succeeded", "{status}: the result stays");
        assert_eq!(r.hits().len(), want, "{status}: attempts");
        let log = client.deliveries(id).await.expect("log");
        assert_eq!(log.len(), want, "{status}: {log:?}");
        assert!(log.iter().all(|e| e["status"] == *status), "{log:?}");
    }

    // Attempts ran out: the event is dead-lettered with the reason.
    assert!(
        eventually(Duration::from_secs(15), || async {
            let filter = DlqFilter {
                reason: Some("webhook_failed".into()),
                ..DlqFilter::default()
            };
            client.dlq_list(&filter, 100).await.expect("dlq").len() == 3
        })
        .await,
        "expected 3 dead-lettered events (301, 400, 500)"
    );

    // 410 disabled the URL for the tenant: a new job's event is not even attempted.
    let (_, gone, first) = &receivers[4];
    let listed = client.endpoints().await.expect("endpoints");
    let disabled = listed
        .iter()
        .find(|e| e["url"] == gone.hook_url())
        .expect("the 410 URL is listed");
    assert_eq!(disabled["kind"], "job_url");
    assert_eq!(disabled["enabled"], false);
    assert!(disabled["disabled"]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("410"));
    let second = submit_id(&client, &sim_job(0, Some(gone.hook_url()))).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            client.get_raw(&second).await.expect("get")["webhook_status"] == "failed"
        })
        .await
    );
    let log = client.deliveries(&second).await.expect("log");
    assert!(
        log[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("disabled"),
        "{log:?}"
    );
    assert_eq!(gone.hits().len(), 1, "no attempt to a disabled endpoint");

    // Every receiver recovers; the 410 URL is re-enabled; a replay since the start sends
    // every failed event again, with its own webhook-id.
    let since = Utc::now() - chrono::Duration::minutes(5);
    for (_, r, _) in &receivers {
        r.set_reply(Reply::default());
    }
    let id = disabled["id"].as_str().expect("id");
    let enabled = client
        .endpoint_action(id, EndpointAction::Enable)
        .await
        .expect("enable");
    assert_eq!(enabled["enabled"], true);
    let replayed = client
        .replay_failed(since, Some("job"))
        .await
        .expect("replay");
    assert_eq!(
        replayed["replayed"], 5,
        "{replayed}: 301, 400, 500 and both 410 jobs"
    );
    let want: Vec<String> = [first, &second]
        .iter()
        .map(|j| event_id(j, EventType::Succeeded))
        .collect();
    assert!(
        eventually(Duration::from_secs(15), || async {
            let got = gone.delivered_ids();
            want.iter().all(|w| got.contains(w))
                && receivers[1..4].iter().all(|(_, r, id)| {
                    r.delivered_ids()
                        .contains(&event_id(id, EventType::Succeeded))
                })
        })
        .await,
        "replayed events did not arrive; logs:\n{}",
        env.logs()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.get_raw(first).await.expect("get")["webhook_status"] == "delivered"
        })
        .await
    );
    // A second replay finds nothing left to send.
    let again = client.replay_failed(since, None).await.expect("replay");
    assert_eq!(again["replayed"], 0, "{again}");

    // A dead-lettered event replays from the dead-letter queue too, with its webhook-id.
    let filter = DlqFilter {
        reason: Some("webhook_failed".into()),
        ..DlqFilter::default()
    };
    let entries = client.dlq_list(&filter, 10).await.expect("dlq");
    let entry = &entries[0];
    let job_id = entry["job_id"].as_str().expect("job id").to_owned();
    let (_, r, _) = receivers
        .iter()
        .find(|(_, _, id)| *id == job_id)
        .expect("its receiver");
    let before = r.hits_for(&job_id).len();
    let entry_id = entry["entry_id"].as_str().expect("entry id");
    client.dlq_replay(entry_id).await.expect("replay the event");
    assert!(
        eventually(Duration::from_secs(15), || async {
            r.hits_for(&job_id).len() == before + 1
        })
        .await
    );
    let last = r.hits_for(&job_id).pop().expect("hit");
    assert_eq!(last.webhook_id, event_id(&job_id, EventType::Succeeded));
    assert_eq!(client.dlq_list(&filter, 10).await.expect("dlq").len(), 2);
}

#[tokio::test]
async fn tenant_endpoints_filter_events_and_a_rotation_signs_with_both_secrets() {
    let (env, client) = fleet("wh-endpoints", "").await;
    let receiver = TestReceiver::start(0).await;
    let own = TestReceiver::start(0).await;

    let created = client
        .create_endpoint(
            &receiver.hook_url(),
            Some(&[EventType::Started, EventType::Succeeded]),
            Some("all jobs"),
        )
        .await
        .expect("create");
    let ep = created["id"].as_str().expect("id").to_owned();
    let first_secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(first_secret.starts_with("whsec_"));
    let listed = client.endpoints().await.expect("list");
    assert!(listed
        .iter()
        .any(|e| e["id"] == ep.as_str() && e.get("secret").is_none()));

    // A job without a webhook of its own: the tenant endpoint gets both event types.
    let a = submit_id(&client, &sim_job(0, None)).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver.hits_for(&a).len() == 2
        })
        .await,
        "logs:\n{}",
        env.logs()
    );
    let mut types: Vec<String> = receiver
        .hits_for(&a)
        .iter()
        .map(|h| h.body["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    types.sort();
    assert_eq!(types, ["job.started", "job.succeeded"]);
    assert!(receiver
        .hits_for(&a)
        .iter()
        .all(|h| h.verifies_with(&first_secret)));
    assert!(receiver
        .hits_for(&a)
        .iter()
        .all(|h| !h.verifies_with(ALPHA_SECRET)));

    // Rotation: the next deliveries carry two signatures; receivers with either secret verify.
    let rotated = client
        .endpoint_action(&ep, EndpointAction::Rotate)
        .await
        .expect("rotate");
    let second_secret = rotated["secret"].as_str().expect("secret").to_owned();
    assert_ne!(second_secret, first_secret);
    let b = submit_id(&client, &sim_job(0, Some(own.hook_url()))).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver.hits_for(&b).len() == 2 && own.hits_for(&b).len() == 1
        })
        .await
    );
    for hit in receiver.hits_for(&b) {
        assert_eq!(hit.signature.split(' ').count(), 2, "{}", hit.signature);
        assert!(hit.verifies_with(&first_secret) && hit.verifies_with(&second_secret));
    }
    // The job's own URL is signed with the tenant secret and takes only the terminal event.
    let own_hits = own.hits_for(&b);
    assert!(own_hits[0].verified);
    assert_eq!(own_hits[0].body["type"], "job.succeeded");

    // Disabled: the next job's events are logged as not sent, the receiver sees nothing.
    let off = client
        .endpoint_action(&ep, EndpointAction::Disable)
        .await
        .expect("disable");
    assert_eq!(off["enabled"], false);
    let c = submit_id(&client, &sim_job(0, Some(own.hook_url()))).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            let log = client.deliveries(&c).await.expect("log");
            own.hits_for(&c).len() == 1 && log.iter().any(|e| e["endpoint"] == ep.as_str())
        })
        .await
    );
    let log = client.deliveries(&c).await.expect("log");
    let entry = log
        .iter()
        .find(|e| e["endpoint"] == ep.as_str())
        .expect("entry");
    assert_eq!(entry["ok"], false);
    assert!(entry["error"]
        .as_str()
        .unwrap_or_default()
        .contains("disabled"));
    assert!(receiver.hits_for(&c).is_empty());

    // Bad input is a 4xx with a reason; config and unknown endpoints are refused.
    let err = client
        .create_endpoint("ftp://example.com/x", None, None)
        .await
        .expect_err("ftp");
    assert!(err.to_string().contains("422"), "{err}");
    let err = client
        .endpoint_action("ep_nope", EndpointAction::Rotate)
        .await
        .expect_err("unknown");
    assert!(err.to_string().contains("404"), "{err}");
    client.delete_endpoint(&ep).await.expect("delete");
    assert!(client.endpoints().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_payload_over_the_cap_carries_a_link_instead_of_the_data() {
    let (_env, client) = fleet(
        "wh-cap",
        "max_payload_bytes = 2048\npublic_api_url = \"https://api.example.test/\"\n",
    )
    .await;
    let receiver = TestReceiver::start(0).await;
    let text = "a fine sentence. ".repeat(200);
    let hook = Some(receiver.hook_url());
    let big = submit_id(
        &client,
        &job("sentiment", json!({"text": text}), hook.clone()),
    )
    .await;
    let small = submit_id(
        &client,
        &job("sentiment", json!({"text": "short and fine"}), hook),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver.hits_for(&big).len() == 1 && receiver.hits_for(&small).len() == 1
        })
        .await
    );
    let hit = &receiver.hits_for(&big)[0];
    assert!(hit.verified);
    assert!(hit.raw.len() <= 2048, "{} bytes", hit.raw.len());
    assert_eq!(hit.body["data"]["truncated"], true);
    assert_eq!(hit.body["data"]["input"], Value::Null);
    assert_eq!(hit.body["data"]["output"], Value::Null);
    assert_eq!(hit.body["data"]["status"], "succeeded");
    assert_eq!(
        hit.body["links"]["job"],
        format!("https://api.example.test/v1/jobs/{big}")
    );
    // The whole result is still there.
    let whole = client.get(&big).await.expect("get");
    assert_eq!(whole.status, JobStatus::Succeeded);
    assert!(whole.output.is_some());
    let small_hit = &receiver.hits_for(&small)[0];
    assert!(small_hit.body.get("links").is_none());
    assert_eq!(small_hit.body["data"]["input"]["text"], "short and fine");
}

fn hook_at(url: &str) -> JobRequest {
    JobRequest {
        webhook: Some(WebhookSpec {
            url: url.to_owned(),
            events: None,
        }),
        ..sim_job(0, None)
    }
}

#[tokio::test]
async fn ssrf_forms_are_refused_and_only_the_allow_list_admits_a_loopback_receiver() {
    // The guard on, with one loopback address allowed explicitly.
    let (env, client) = fleet(
        "wh-ssrf",
        "allow_private = false\nallow_addresses = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let receiver = TestReceiver::start(0).await;
    let port = receiver.url.rsplit(':').next().expect("port").to_owned();

    // 2130706433 is 127.0.0.1 written as one decimal number: allowed, and delivered.
    let decimal = format!("http://2130706433:{port}/webhooks");
    let id = submit_id(&client, &hook_at(&decimal)).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver.hits_for(&id).len() == 1
        })
        .await,
        "logs:\n{}",
        env.logs()
    );

    for url in [
        format!("http://127.0.0.2:{port}/webhooks"),
        format!("http://0x7f000002:{port}/webhooks"),
        format!("http://127.2:{port}/webhooks"),
        format!("http://[::1]:{port}/webhooks"),
        format!("http://[::ffff:7f00:2]:{port}/webhooks"),
        format!("http://localhost:{port}/webhooks"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://2852039166/latest/meta-data".to_owned(),
        "http://[fd00:ec2::254]/latest".to_owned(),
        "http://[64:ff9b::a9fe:a9fe]/latest".to_owned(),
        // 012 is octal: 10.0.0.1
        "http://012.0.0.1/x".to_owned(),
        "http://100.64.0.1/x".to_owned(),
    ] {
        let err = client.submit(&hook_at(&url), None).await.expect_err(&url);
        let text = err.to_string();
        assert!(
            text.contains("422") && text.contains("SSRF"),
            "{url}: {text}"
        );
        let err = client
            .create_endpoint(&url, None, None)
            .await
            .expect_err(&url);
        assert!(err.to_string().contains("422"), "{url}: {err}");
    }
    drop(env);

    // Without the allow-list the same loopback receiver is refused in every notation.
    let mut env = TestEnv::with_options("wh-ssrf-off", opts("allow_private = false\n")).await;
    let client = env.start_producer().await;
    for url in [
        format!("http://127.0.0.1:{port}/webhooks"),
        format!("http://2130706433:{port}/webhooks"),
        format!("http://0x7f.0.0.1:{port}/webhooks"),
        format!("http://0177.0.0.1:{port}/webhooks"),
        format!("http://127.1:{port}/webhooks"),
    ] {
        let err = client.submit(&hook_at(&url), None).await.expect_err(&url);
        assert!(err.to_string().contains("SSRF"), "{url}: {err}");
    }
}

#[tokio::test]
async fn a_retry_waiting_in_a_delay_tier_survives_a_worker_crash() {
    let mut env = TestEnv::with_options("wh-durable", opts("schedule_s = [0, 3]\n")).await;
    let client = env.start_producer().await;
    let w = env.start_worker(&[]).await;
    let receiver = TestReceiver::start(1).await;
    let id = submit_id(&client, &sim_job(0, Some(receiver.hook_url()))).await;
    // The first attempt fails; its retry is parked in a delay tier of the broker, not held
    // in the worker's memory.
    let tier = env.names.events_tier(1);
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver.hits_for(&id).len() == 1 && env.queue_len(&tier).await == 1
        })
        .await,
        "logs:\n{}",
        env.logs()
    );
    env.workers[w].kill9();
    env.start_worker(&[]).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            receiver
                .delivered_ids()
                .contains(&event_id(&id, EventType::Succeeded))
        })
        .await,
        "logs:\n{}",
        env.logs()
    );
    let hits = receiver.hits_for(&id);
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].webhook_id, hits[1].webhook_id);
    let gap = hits[1].at.duration_since(hits[0].at).as_secs_f64();
    assert!(gap >= 3.0 * 0.8 - 0.05, "retried after {gap:.2} s");
    let log = client.deliveries(&id).await.expect("log");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1]["attempt"], 2);
}

#[tokio::test]
async fn an_endpoint_enabled_elsewhere_takes_a_replay_at_once_despite_a_cached_view() {
    // Workers cache the endpoint registry for a minute here; the enable happens in the API.
    let opts = EnvOptions {
        webhooks_toml: "tiers_s = [1, 5]\nschedule_s = [0]\nendpoint_cache_ms = 60000\n".into(),
        ..EnvOptions::default()
    };
    let mut env = TestEnv::with_options("wh-stale", opts).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let receiver = TestReceiver::start(0).await;
    let created = client
        .create_endpoint(&receiver.hook_url(), None, None)
        .await
        .expect("create");
    let ep = created["id"].as_str().expect("id").to_owned();
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    client
        .endpoint_action(&ep, EndpointAction::Disable)
        .await
        .expect("disable");
    let id = submit_id(&client, &sim_job(0, None)).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            client.get_raw(&id).await.expect("get")["webhook_status"] == "failed"
        })
        .await,
        "logs:\n{}",
        env.logs()
    );
    client
        .endpoint_action(&ep, EndpointAction::Enable)
        .await
        .expect("enable");
    let replayed = client
        .replay_failed(since, Some(&ep))
        .await
        .expect("replay");
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    assert!(
        eventually(Duration::from_secs(15), || async {
            receiver
                .delivered_ids()
                .contains(&event_id(&id, EventType::Succeeded))
        })
        .await,
        "the replay met the worker's stale view; logs:\n{}",
        env.logs()
    );
    // An unknown endpoint is a 404, not an empty replay.
    let err = client
        .replay_failed(since, Some("ep_nope"))
        .await
        .expect_err("unknown endpoint");
    assert!(err.to_string().contains("404"), "{err}");
}
