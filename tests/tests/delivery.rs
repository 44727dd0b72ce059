//! Delivery guarantees: poison jobs (S2), retries to exhaustion, timeouts, deadlines,
//! cancellation, dead-letter replay.

use std::time::Duration;

use chrono::Utc;
use flotilla_shared::job::{event_id, ErrorKind, EventType, JobStatus};
use flotilla_tests::{eventually, job, sim_job, EnvOptions, TestEnv, TestReceiver};
use reqwest::StatusCode;
use serde_json::json;

fn opts(jobs: &str, sim: &str) -> EnvOptions {
    EnvOptions {
        jobs_toml: format!(
            "lease_s = 3\nretry_tiers_s = [1, 2, 5, 30]\nretry_base_ms = 200\n{jobs}"
        ),
        sim_toml: sim.into(),
        ..EnvOptions::default()
    }
}

/// S2: a job that aborts every worker that runs it. The harness restarts workers (as
/// Kubernetes would); after `max_attempts` claims the job is failed as poison, dead-lettered
/// with its attempt count, one `job.failed` event is sent, the normal job behind it completes
/// and the crash loop stops. Then, with the fix deployed, a replay runs it to success.
#[tokio::test]
async fn s2_poison_job_is_failed_dead_lettered_and_replayable() {
    let mut env = TestEnv::with_options("s2", opts("max_attempts = 3", "allow_crash = true")).await;
    let client = env.start_producer().await;
    let receiver = TestReceiver::start(0).await;
    let mut poison = sim_job(10, Some(receiver.hook_url()));
    poison.params = Some(json!({"crash": true}));
    let bad = client
        .submit(&poison, None)
        .await
        .expect("submit")
        .response
        .id;
    let good = client
        .submit(&sim_job(10, None), None)
        .await
        .expect("submit")
        .response
        .id;

    let mut restarts = 0;
    let mut w = env.spawn_worker(&["--concurrency", "1"]);
    let terminal = |env: &TestEnv, id: String| {
        let store = env.store.clone();
        async move { matches!(store.get(&id).await, Ok(Some(j)) if j.job.status.is_terminal()) }
    };
    let give_up = std::time::Instant::now() + Duration::from_secs(90);
    while !terminal(&env, bad.clone()).await {
        assert!(
            restarts < 10 && std::time::Instant::now() < give_up,
            "crash loop did not stop; {}",
            env.logs()
        );
        if env.workers[w].ended_within(Duration::from_secs(15)).await {
            restarts += 1;
            w = env.spawn_worker(&["--concurrency", "1"]);
        }
    }
    let failed = client
        .wait(&bad, Duration::from_secs(5))
        .await
        .expect("poison job");
    assert_eq!(failed.status, JobStatus::Failed);
    let err = failed.error.expect("error");
    assert_eq!(err.kind, ErrorKind::Poison);
    assert!(err.message.contains("3 attempts"), "{}", err.message);
    assert_eq!(failed.attempts, 3);
    assert_eq!(restarts, 3, "one crash per attempt");

    let normal = client
        .wait(&good, Duration::from_secs(30))
        .await
        .expect("normal job");
    assert_eq!(normal.status, JobStatus::Succeeded);
    assert!(env.workers[w].alive(), "the crash loop stopped");

    assert!(
        eventually(Duration::from_secs(10), || async {
            !receiver.hits_for(&bad).is_empty()
        })
        .await
    );
    let hits = receiver.hits_for(&bad);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].webhook_id, event_id(&bad, EventType::Failed));

    let entry_found = eventually(Duration::from_secs(10), || async {
        env.store
            .dlq_list(&Default::default(), 10)
            .await
            .is_ok_and(|l| l.iter().any(|e| e.reason == "poison"))
    })
    .await;
    assert!(entry_found, "{}", env.logs());
    let entries = client
        .dlq_list(
            &flotilla_shared::dlq::DlqFilter {
                reason: Some("poison".into()),
                ..Default::default()
            },
            10,
        )
        .await
        .expect("admin list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["job_id"], bad.as_str());
    assert_eq!(entries[0]["model"], "sim");
    let entry_id = entries[0]["entry_id"]
        .as_str()
        .expect("entry id")
        .to_owned();
    let shown = client.dlq_show(&entry_id).await.expect("show");
    assert!(shown["body"].as_str().expect("body").contains(&bad));

    // The fix is deployed (crashing is no longer allowed): replay keeps the job id.
    env.rewrite_config(&opts("max_attempts = 3", "allow_crash = false"));
    env.workers[w].sigterm();
    assert_eq!(
        env.workers[w].wait_exit(Duration::from_secs(20)).await,
        Some(0)
    );
    env.start_worker(&["--concurrency", "1"]).await;
    let replayed = client.dlq_replay(&entry_id).await.expect("replay");
    assert_eq!(replayed["job_id"], bad.as_str());
    let again = client
        .wait(&bad, Duration::from_secs(30))
        .await
        .expect("replayed job");
    assert_eq!(again.status, JobStatus::Succeeded, "{}", env.logs());
    assert_eq!(again.attempts, 1);
    assert!(client
        .dlq_list(&Default::default(), 10)
        .await
        .expect("list")
        .iter()
        .all(|e| e["entry_id"] != entry_id.as_str()));
    // Admin scope is required.
    let err = env
        .client(flotilla_tests::BETA_KEY)
        .dlq_list(&Default::default(), 10)
        .await
        .expect_err("beta");
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
}

/// S2 variant: a backend that always fails transiently reaches `failed` through the ordinary
/// retry path after the configured attempts, with one `job.failed` event.
#[tokio::test]
async fn always_failing_backend_fails_after_max_attempts() {
    let mut env = TestEnv::with_options(
        "always500",
        // The default allows 5 attempts; the sim model's own policy allows 3.
        opts("max_attempts = 5\n[jobs.models.sim]\nmax_attempts = 3", ""),
    )
    .await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let receiver = TestReceiver::start(0).await;
    let mut req = sim_job(10, Some(receiver.hook_url()));
    req.params = Some(json!({"fail_rate": 1.0}));
    let id = client.submit(&req, None).await.expect("submit").response.id;
    let done = client
        .wait(&id, Duration::from_secs(40))
        .await
        .expect("ends");
    assert_eq!(done.status, JobStatus::Failed, "{}", env.logs());
    assert_eq!(
        done.error.expect("error").kind,
        ErrorKind::UpstreamUnavailable
    );
    assert_eq!(done.attempts, 3);
    assert!(
        eventually(Duration::from_secs(10), || async {
            receiver.hits_for(&id).len() == 1
        })
        .await
    );

    // A permanent failure does not retry.
    let mut req = sim_job(10, None);
    req.params = Some(json!({"fail_rate": 1.0, "fail": "permanent"}));
    let id = client.submit(&req, None).await.expect("submit").response.id;
    let done = client
        .wait(&id, Duration::from_secs(20))
        .await
        .expect("ends");
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.error.expect("error").kind, ErrorKind::ModelError);
    assert_eq!(done.attempts, 1);
}

#[tokio::test]
async fn timeout_s_is_enforced_on_the_model_call() {
    let mut env = TestEnv::with_options("timeout", opts("max_attempts = 2", "")).await;
    let client = env.start_producer().await;
    env.start_worker(&[]).await;
    let mut req = sim_job(10_000, None);
    req.timeout_s = Some(1);
    let started = std::time::Instant::now();
    let id = client.submit(&req, None).await.expect("submit").response.id;
    let done = client
        .wait(&id, Duration::from_secs(30))
        .await
        .expect("ends");
    assert_eq!(done.status, JobStatus::Failed);
    let err = done.error.expect("error");
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.message.contains("timeout_s = 1"), "{}", err.message);
    assert_eq!(done.attempts, 2, "a timeout is retried");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "never waits for the 10 s model"
    );
}

#[tokio::test]
async fn a_job_not_started_by_its_deadline_expires_without_running() {
    let mut env = TestEnv::new("deadline").await;
    let client = env.start_producer().await;
    let receiver = TestReceiver::start(0).await;
    let mut req = sim_job(10, Some(receiver.hook_url()));
    let deadline = Utc::now() + chrono::Duration::milliseconds(1500);
    req.deadline = Some(deadline);
    let id = client.submit(&req, None).await.expect("submit").response.id;
    // No worker until the deadline has passed.
    assert!(eventually(Duration::from_secs(5), || async { Utc::now() > deadline }).await);
    env.start_worker(&[]).await;
    let done = client
        .wait(&id, Duration::from_secs(20))
        .await
        .expect("ends");
    assert_eq!(done.status, JobStatus::Expired);
    assert_eq!(done.error.expect("error").kind, ErrorKind::Expired);
    assert!(done.output.is_none(), "never ran");
    assert_eq!(done.attempts, 0, "no attempt started");
    assert!(done.started_at.is_none());
    assert!(
        eventually(Duration::from_secs(10), || async {
            !receiver.hits_for(&id).is_empty()
        })
        .await
    );
    assert_eq!(
        receiver.hits_for(&id)[0].webhook_id,
        event_id(&id, EventType::Expired)
    );
}

#[tokio::test]
async fn cancel_waiting_running_and_finished_jobs() {
    let mut env = TestEnv::new("cancel").await;
    let client = env.start_producer().await;
    let receiver = TestReceiver::start(0).await;
    // Only a webhook dispatcher at first: jobs wait in the queue.
    env.start_worker(&["--roles", "events"]).await;

    // Waiting (no job consumer yet): canceled at once, with its event.
    let waiting = client
        .submit(&sim_job(10, Some(receiver.hook_url())), None)
        .await
        .expect("submit")
        .response
        .id;
    let c = client.cancel(&waiting).await.expect("cancel");
    assert_eq!(c.status, JobStatus::Canceled);
    assert_eq!(c.error.as_ref().expect("error").kind, ErrorKind::Canceled);
    assert!(
        eventually(Duration::from_secs(10), || async {
            receiver.hits_for(&waiting).len() == 1
        })
        .await
    );
    assert_eq!(
        receiver.hits_for(&waiting)[0].webhook_id,
        event_id(&waiting, EventType::Canceled)
    );

    // Running: the worker stops the model call.
    env.start_worker(&["--concurrency", "2"]).await;
    let running = client
        .submit(&sim_job(30_000, Some(receiver.hook_url())), None)
        .await
        .expect("submit")
        .response
        .id;
    let is_running = eventually(Duration::from_secs(20), || async {
        matches!(env.store.get(&running).await, Ok(Some(j)) if j.job.status == JobStatus::Running)
    })
    .await;
    assert!(is_running);
    let asked = std::time::Instant::now();
    let c = client.cancel(&running).await.expect("cancel");
    assert_eq!(c.status, JobStatus::Running, "202: the worker stops it");
    let done = client
        .wait(&running, Duration::from_secs(15))
        .await
        .expect("ends");
    assert_eq!(done.status, JobStatus::Canceled, "{}", env.logs());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped long before the 30 s model ends"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            receiver.hits_for(&running).len() == 1
        })
        .await
    );

    // The waiting job's message, when a worker takes it, is acked without running.
    let msg_gone = eventually(Duration::from_secs(10), || async {
        env.queue_len(&env.names.jobs_queue("default")).await == 0
    })
    .await;
    assert!(msg_gone);
    assert_eq!(receiver.hits_for(&waiting).len(), 1, "no second event");

    // Finished: 409.
    let finished = client
        .submit(&job("tokens", json!({"text": "x"}), None), None)
        .await
        .expect("submit")
        .response
        .id;
    client
        .wait(&finished, Duration::from_secs(20))
        .await
        .expect("ends");
    let err = client.cancel(&finished).await.expect_err("finished");
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
}
