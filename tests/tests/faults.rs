//! Fault scenarios from `SCENARIOS.md`: S1 (SIGKILL mid-job), S5 (malformed messages),
//! S7 (SIGTERM drain), and a worker killed during a batch.

use std::{collections::HashSet, time::Duration};

use flotilla_shared::{
    amqp::{headers, json_properties, Publisher},
    job::{event_id, EventType, JobRequest, JobStatus, WebhookSpec},
};
use flotilla_tests::{eventually, TestEnv, TestReceiver};
use serde_json::json;

fn sim(latency_ms: u64, hook: Option<String>) -> JobRequest {
    JobRequest {
        model: "sim".into(),
        input: json!({"n": latency_ms}),
        params: Some(json!({"latency_ms": latency_ms})),
        webhook: hook.map(|url| WebhookSpec { url, events: None }),
        metadata: None,
        timeout_s: None,
        deadline: None,
    }
}

async fn wait_status(env: &TestEnv, id: &str, status: JobStatus) -> bool {
    eventually(Duration::from_secs(20), || async {
        matches!(env.store.get(id).await, Ok(Some(j)) if j.job.status == status)
    })
    .await
}

/// S5: four undecodable messages go to the DLQ with their reasons; the worker keeps running
/// and completes the valid job behind them; no webhook for the bad ones.
#[tokio::test]
async fn s5_malformed_messages_are_dead_lettered_with_reasons() {
    let mut env = TestEnv::new("s5").await;
    let client = env.start_producer().await;
    let receiver = TestReceiver::start(0).await;
    let w = env.start_worker(&["--concurrency", "1"]).await;
    let publisher = Publisher::open(&env.amqp, Duration::from_secs(5))
        .await
        .expect("publisher");
    let bomb = vec![b'['; 1024 * 1024];
    let bodies: [&[u8]; 4] = [
        br#"{"model":"#,
        &[0xff, 0xfe, 0x00],
        br#"{"id":"x"}"#,
        &bomb,
    ];
    for body in bodies {
        publisher
            .publish(
                &env.names.jobs_exchange(),
                "default",
                body,
                json_properties("bad", headers([], [])),
            )
            .await
            .expect("publish bad message");
    }
    let id = client
        .submit(&sim(10, Some(receiver.hook_url())), None)
        .await
        .expect("submit")
        .response
        .id;
    let job = client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("valid job ends");
    assert_eq!(job.status, JobStatus::Succeeded, "{}", env.logs());

    // The worker's dlq role records every dead letter in Redis.
    let recorded = eventually(Duration::from_secs(10), || async {
        env.store
            .dlq_list(&Default::default(), 100)
            .await
            .map(|l| l.len() >= 4)
            .unwrap_or(false)
    })
    .await;
    assert!(recorded, "{}", env.logs());
    let entries = env
        .store
        .dlq_list(&Default::default(), 100)
        .await
        .expect("dlq");
    let mut reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        ["invalid_json", "invalid_utf8", "schema_invalid", "too_deep"]
    );
    assert!(entries
        .iter()
        .all(|e| e.source_queue == env.names.jobs_queue("default")));
    let cut = entries
        .iter()
        .find(|e| e.reason == "invalid_json")
        .expect("entry");
    assert_eq!(
        cut.body(),
        br#"{"model":"#,
        "the body is kept for inspection"
    );
    assert_eq!(
        env.queue_len(&env.names.dlq()).await,
        0,
        "consumed and recorded"
    );
    // An operator purges one kind (admin API); the others stay.
    let purged = client
        .dlq_purge_matching(&flotilla_shared::dlq::DlqFilter {
            reason: Some("too_deep".into()),
            ..Default::default()
        })
        .await
        .expect("purge");
    assert_eq!(purged["purged"], 1);
    let left = env
        .store
        .dlq_list(&Default::default(), 100)
        .await
        .expect("dlq");
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|e| e.reason != "too_deep"));
    // And one entry by id.
    let one = client
        .dlq_purge(&left[0].entry_id)
        .await
        .expect("purge one");
    assert_eq!(one["purged"], 1);
    assert_eq!(
        env.store
            .dlq_list(&Default::default(), 100)
            .await
            .expect("dlq")
            .len(),
        2
    );
    let gone = client
        .dlq_show(&left[0].entry_id)
        .await
        .expect_err("purged");
    assert_eq!(gone.status(), Some(reqwest::StatusCode::NOT_FOUND));
    assert!(env.workers[w].alive(), "the worker never restarts");
    assert!(
        eventually(Duration::from_secs(10), || async {
            receiver.hits().len() == 1
        })
        .await
    );
    assert_eq!(receiver.hits().len(), 1, "a webhook for the valid job only");
}

/// A message naming an accepted job but carrying other content runs the stored job.
#[tokio::test]
async fn a_forged_message_runs_the_stored_job_not_its_own_content() {
    let mut env = TestEnv::new("forged").await;
    let client = env.start_producer().await;
    let mut req = sim(10, None);
    req.input = json!({"real": "input"});
    let id = client.submit(&req, None).await.expect("submit").response.id;
    let forged = json!({
        "v": 1, "id": id, "tenant": "beta", "model": "sim", "input": {"forged": true},
        "params": {}, "metadata": {}, "created_at": "2020-01-01T00:00:00Z"
    });
    let publisher = Publisher::open(&env.amqp, Duration::from_secs(5))
        .await
        .expect("publisher");
    publisher
        .publish(
            &env.names.jobs_exchange(),
            "default",
            forged.to_string().as_bytes(),
            json_properties(&id, headers([], [])),
        )
        .await
        .expect("publish");
    env.start_worker(&["--concurrency", "1"]).await;
    let job = client
        .wait(&id, Duration::from_secs(20))
        .await
        .expect("ends");
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(
        job.output.expect("output")["echo"],
        json!({"real": "input"})
    );
    assert!(
        job.timings.total_ms.expect("total") < 60_000.0,
        "timings from the record"
    );
}

/// S1: a worker SIGKILLed mid-job; a fresh worker runs it again: one result, one webhook,
/// the redelivery counted as an attempt.
#[tokio::test]
async fn s1_worker_killed_mid_job_runs_again_with_one_result_and_one_webhook() {
    let mut env = TestEnv::new("s1").await;
    let client = env.start_producer().await;
    let receiver = TestReceiver::start(0).await;
    let first = env.start_worker(&["--concurrency", "1"]).await;
    let id = client
        .submit(&sim(4000, Some(receiver.hook_url())), None)
        .await
        .expect("submit")
        .response
        .id;
    assert!(
        wait_status(&env, &id, JobStatus::Running).await,
        "{}",
        env.logs()
    );
    env.workers[first].kill9();
    let stored = env.store.get(&id).await.expect("get").expect("record");
    assert_eq!(
        stored.job.status,
        JobStatus::Running,
        "never succeeded without the worker"
    );
    assert!(stored.job.output.is_none());

    env.start_worker(&["--concurrency", "1"]).await;
    let job = client
        .wait(&id, Duration::from_secs(45))
        .await
        .expect("job ends");
    assert_eq!(job.status, JobStatus::Succeeded, "{}", env.logs());
    assert_eq!(job.output.as_ref().expect("output")["latency_ms"], 4000);
    assert_eq!(job.attempts, 2, "the redelivery counts as an attempt");

    assert!(
        eventually(Duration::from_secs(15), || async {
            !receiver.hits_for(&id).is_empty()
        })
        .await
    );
    // Nothing left that could deliver again: both queues are empty.
    assert!(env.drained(Duration::from_secs(10)).await);
    let hits = receiver.hits_for(&id);
    assert_eq!(hits.len(), 1, "one completion webhook: {hits:?}");
    assert_eq!(hits[0].webhook_id, event_id(&id, EventType::Succeeded));
}

/// S7: SIGTERM with a long enough grace period: the running job finishes on the same worker,
/// no other worker runs it, new jobs go elsewhere, the worker exits 0.
#[tokio::test]
async fn s7_sigterm_finishes_the_running_job_and_exits_zero() {
    let mut env = TestEnv::new("s7").await;
    let client = env.start_producer().await;
    let draining = env
        .start_worker(&["--concurrency", "1", "--grace-s", "60"])
        .await;
    let id = client
        .submit(&sim(8000, None), None)
        .await
        .expect("submit")
        .response
        .id;
    assert!(wait_status(&env, &id, JobStatus::Running).await);
    let other = env.start_worker(&["--concurrency", "1"]).await;
    env.workers[draining].sigterm();
    // A job submitted during the drain goes to the other worker.
    let later = client
        .submit(&sim(10, None), None)
        .await
        .expect("submit")
        .response
        .id;
    let later_job = client
        .wait(&later, Duration::from_secs(20))
        .await
        .expect("later job");
    assert_eq!(later_job.status, JobStatus::Succeeded);
    assert!(env.workers[draining].alive(), "still draining the 8 s job");

    let code = env.workers[draining]
        .wait_exit(Duration::from_secs(30))
        .await;
    assert_eq!(code, Some(0), "{}", env.logs());
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.attempts, 1, "no other worker ran it");
    assert!(
        !env.workers[draining].log_text().contains(&later),
        "no new deliveries while draining"
    );
    assert!(env.workers[other].log_text().contains(&later));
}

/// S7 with a grace period shorter than the job: the job is requeued with its lease released,
/// and the next worker takes it at once.
#[tokio::test]
async fn s7_short_grace_requeues_and_releases_the_lease() {
    let mut env = TestEnv::new("s7short").await;
    let client = env.start_producer().await;
    let w = env
        .start_worker(&["--concurrency", "1", "--grace-s", "1"])
        .await;
    let id = client
        .submit(&sim(20_000, None), None)
        .await
        .expect("submit")
        .response
        .id;
    assert!(wait_status(&env, &id, JobStatus::Running).await);
    env.workers[w].sigterm();
    let code = env.workers[w].wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{}", env.logs());

    let stored = env.store.get(&id).await.expect("get").expect("record");
    assert_eq!(stored.job.status, JobStatus::Queued, "given back, not lost");
    assert_eq!(stored.lease_owner, None, "lease released");
    assert_eq!(
        stored.job.attempts, 0,
        "an interrupted drain is not a failed attempt"
    );
    assert_eq!(
        env.queue_len(&env.names.jobs_queue("default")).await,
        1,
        "message requeued"
    );

    env.start_worker(&["--concurrency", "1"]).await;
    assert!(
        wait_status(&env, &id, JobStatus::Running).await,
        "taken at once, no lease wait"
    );
    let stored = env.store.get(&id).await.expect("get").expect("record");
    assert_eq!(stored.job.attempts, 1);
}

/// Killing a worker with SIGKILL during a batch loses no job; every job ends succeeded with
/// one terminal event id.
#[tokio::test]
async fn sigkill_during_a_batch_loses_no_job() {
    let mut env = TestEnv::new("batchkill").await;
    let client = env.start_producer().await;
    let receiver = TestReceiver::start(0).await;
    let victim = env.start_worker(&["--concurrency", "4"]).await;
    env.start_worker(&["--concurrency", "4"]).await;
    let mut ids = Vec::new();
    for _ in 0..120 {
        let s = client
            .submit(&sim(50, Some(receiver.hook_url())), None)
            .await
            .expect("submit");
        ids.push(s.response.id);
    }
    let some_done = eventually(Duration::from_secs(20), || async {
        let mut n = 0;
        for id in ids.iter().take(40) {
            if matches!(env.store.get(id).await, Ok(Some(j)) if j.job.status == JobStatus::Succeeded) {
                n += 1;
            }
        }
        n >= 10
    })
    .await;
    assert!(some_done);
    env.workers[victim].kill9();
    env.start_worker(&["--concurrency", "4"]).await;
    for id in &ids {
        let job = client
            .wait(id, Duration::from_secs(60))
            .await
            .expect("job ends");
        assert_eq!(job.status, JobStatus::Succeeded, "{id}\n{}", env.logs());
        assert!(job.output.is_some());
    }
    let all_hooked = eventually(Duration::from_secs(30), || async {
        ids.iter().all(|id| !receiver.hits_for(id).is_empty())
    })
    .await;
    assert!(all_hooked, "every job's webhook arrives");
    for id in &ids {
        let webhook_ids: HashSet<String> = receiver
            .hits_for(id)
            .into_iter()
            .map(|h| h.webhook_id)
            .collect();
        assert_eq!(
            webhook_ids,
            HashSet::from([event_id(id, EventType::Succeeded)])
        );
    }
}
