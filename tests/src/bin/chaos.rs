//! `make chaos`: 2000 jobs over the `sim` backend through a RabbitMQ node and a Redis (AOF,
//! `appendfsync always`) that this program starts, while a driver SIGKILLs a random worker every
//! few seconds and restarts it, restarts the broker once and Redis once, and the webhook
//! receiver fails 30% of requests.
//!
//! Asserts every job terminal and succeeded, one terminal write per job, every job's event
//! received at least once, and no message left in any queue; the last line printed is
//! `chaos: jobs=… terminal=… lost=… duplicate_results=… duplicate_webhooks=… worker_kills=…
//! broker_restarts=… redis_restarts=…`. Exit 0 only when everything held.

use std::{
    collections::HashSet,
    process::ExitCode,
    time::{Duration, Instant},
};

use flotilla_shared::{job::JobStatus, store::with_retries};
use flotilla_tests::{
    bin_dir, eventually, random_below,
    services::{OwnRabbit, OwnRedis},
    sim_job, EnvOptions, TestEnv, TestReceiver,
};
use futures_util::{stream, StreamExt as _};
use serde_json::json;

const JOBS: usize = 2000;
const WORKERS: usize = 3;
const KILL_EVERY: Duration = Duration::from_secs(3);
const TIME_LIMIT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> ExitCode {
    let started = Instant::now();
    let dir = bin_dir().join("chaos-run");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("chaos: starting a RabbitMQ node and a Redis of its own");
    let rabbit = OwnRabbit::start(&dir.join("rabbit")).await;
    let mut redis = OwnRedis::start(&dir.join("redis")).await;
    let mut env = TestEnv::with_options(
        "chaos",
        EnvOptions {
            amqp_url: Some(rabbit.url(5)),
            redis_url: Some(redis.url()),
            jobs_toml: "lease_s = 3\nmax_attempts = 10\ndelivery_limit = 50\n\
                        retry_tiers_s = [1, 2, 5, 30]\nretry_base_ms = 200\n"
                .into(),
            sim_toml: String::new(),
            // 30% of deliveries fail: 15 attempts a second apart leave ~1e-8 per event to
            // chance.
            webhooks_toml: format!(
                "schedule_s = [0{}]\ntiers_s = [1, 5]\nendpoint_cache_ms = 0\n",
                ", 1".repeat(14)
            ),
        },
    )
    .await;
    let client = env.start_producer().await;
    let receiver = TestReceiver::start_with(0, 0.30).await;
    let worker_args = ["--concurrency", "8", "--grace-s", "5"];
    for _ in 0..WORKERS {
        env.start_worker(&worker_args).await;
    }

    // Submit everything in the background; the API may answer 503 during restarts, and the
    // idempotency key makes every retry safe.
    let hook = receiver.hook_url();
    let mut submitter = Some({
        let client = client.clone();
        tokio::spawn(async move {
            stream::iter(0..JOBS)
                .map(|i| {
                    let (client, hook) = (client.clone(), hook.clone());
                    async move {
                        let mut req = sim_job(0, Some(hook));
                        req.params = Some(json!({"latency_ms": 20, "jitter_ms": 180}));
                        req.input = json!({"i": i});
                        let key = format!("chaos-{i}");
                        let deadline = Instant::now() + Duration::from_secs(120);
                        loop {
                            match client.submit(&req, Some(&key)).await {
                                Ok(s) => return Some(s.response.id),
                                Err(e) if e.is_transient() && Instant::now() < deadline => {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                Err(e) => {
                                    eprintln!("chaos: job {i} not accepted: {e}");
                                    return None;
                                }
                            }
                        }
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
        })
    });

    // The fault driver.
    let (mut kills, mut broker_restarts, mut redis_restarts) = (0usize, 0usize, 0usize);
    let mut next_kill = Instant::now() + KILL_EVERY;
    let mut live: Vec<usize> = (0..WORKERS).collect();
    let mut ids: Option<Vec<String>> = None;
    let mut pending: Option<Vec<String>> = None;
    let store = env.store.clone();
    loop {
        let t = started.elapsed();
        if broker_restarts == 0 && t > Duration::from_secs(25) {
            eprintln!("chaos: restarting the broker");
            rabbit.stop_app();
            tokio::time::sleep(Duration::from_secs(2)).await;
            rabbit.start_app().await;
            broker_restarts += 1;
        }
        if redis_restarts == 0 && t > Duration::from_secs(40) {
            eprintln!("chaos: restarting Redis");
            redis.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            redis.restart().await;
            redis_restarts += 1;
        }
        if Instant::now() >= next_kill {
            let victim = live.remove(random_below(live.len() as u32) as usize);
            env.workers[victim].kill9();
            kills += 1;
            live.push(env.spawn_worker(&worker_args));
            next_kill = Instant::now() + KILL_EVERY;
        }
        if submitter.as_ref().is_some_and(|s| s.is_finished()) {
            if let Some(handle) = submitter.take() {
                let got = handle.await.unwrap_or_default();
                ids = Some(got.into_iter().flatten().collect());
            }
        }
        if let Some(ids) = &ids {
            // Only the jobs not yet seen terminal are checked again.
            let pending_now = pending.get_or_insert_with(|| ids.clone());
            let mut still = Vec::with_capacity(pending_now.len());
            for id in pending_now.drain(..) {
                if !matches!(store.get(&id).await, Ok(Some(j)) if j.job.status.is_terminal()) {
                    still.push(id);
                }
            }
            *pending_now = still;
            if pending_now.is_empty() && broker_restarts == 1 && redis_restarts == 1 {
                break;
            }
        }
        if started.elapsed() > TIME_LIMIT {
            eprintln!("chaos: time limit reached");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let ids = ids.unwrap_or_default();
    // The loop may end right after Redis was restarted: count once it has loaded its AOF.
    eventually(Duration::from_secs(30), || async {
        store.ping().await.is_ok()
    })
    .await;
    let mut terminal = 0;
    let mut succeeded = 0;
    let mut shown = 0;
    for id in &ids {
        let got = with_retries(|| store.get(id)).await;
        if let Ok(Some(j)) = &got {
            terminal += usize::from(j.job.status.is_terminal());
            succeeded += usize::from(j.job.status == JobStatus::Succeeded);
        }
        let open = !matches!(&got, Ok(Some(j)) if j.job.status.is_terminal());
        if open && shown < 5 {
            shown += 1;
            match &got {
                Ok(Some(j)) => eprintln!(
                    "chaos: not terminal: {id} status={} attempts={} lease_owner={:?} event_published={}",
                    j.job.status.as_str(),
                    j.job.attempts,
                    j.lease_owner,
                    j.event_published
                ),
                other => eprintln!("chaos: not terminal: {id} read={other:?}"),
            }
        }
    }
    let lost = JOBS - terminal;
    let all_hooked = eventually(Duration::from_secs(60), || async {
        ids.iter()
            .all(|id| receiver.hits_for(id).iter().any(|h| h.answered == 204))
    })
    .await;
    // Terminal writes per job, from the workers' logs (each "job finished" is one finish.lua
    // that changed the record).
    let finishes = env.finishes_per_job();
    let duplicate_results: usize = finishes.values().map(|n| n.saturating_sub(1)).sum();
    let accepted: Vec<_> = receiver
        .hits()
        .into_iter()
        .filter(|h| h.answered == 204)
        .collect();
    let distinct: HashSet<&str> = accepted.iter().map(|h| h.webhook_id.as_str()).collect();
    let duplicate_webhooks = accepted.len() - distinct.len();
    let unverified = receiver.hits().iter().filter(|h| !h.verified).count();
    let mut left = 0;
    let names = env.names.clone();
    let mut queues = vec![
        names.jobs_queue("default"),
        names.events_queue(),
        names.dlq(),
    ];
    queues.extend(
        env.config
            .jobs
            .retry_tiers_s
            .iter()
            .map(|t| names.retry_tier(*t)),
    );
    for q in &queues {
        left += env.queue_len(q).await as usize;
    }
    let dead_letters = store
        .dlq_list(&Default::default(), 10_000)
        .await
        .map(|l| l.len())
        .unwrap_or(usize::MAX);

    let ok = ids.len() == JOBS
        && lost == 0
        && succeeded == JOBS
        && duplicate_results == 0
        && all_hooked
        && unverified == 0
        && left == 0
        && dead_letters == 0;
    if !ok {
        eprintln!(
            "chaos: FAILED accepted={} succeeded={succeeded} all_webhooks={all_hooked} unverified={unverified} \
             messages_left={left} dead_letters={dead_letters}; logs in {}",
            ids.len(),
            env.dir.display()
        );
        // Keep the logs for a look.
        std::mem::forget(env);
    } else {
        drop(env);
    }
    drop(redis);
    drop(rabbit);
    println!(
        "chaos: jobs={JOBS} terminal={terminal} lost={lost} duplicate_results={duplicate_results} \
         duplicate_webhooks={duplicate_webhooks} worker_kills={kills} broker_restarts={broker_restarts} \
         redis_restarts={redis_restarts}"
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
