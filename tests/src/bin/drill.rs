//! `make drill`: a Kubernetes-style rolling update on this machine. Three workers run 1000
//! jobs; each worker in turn gets a replacement (surge), then SIGTERM. Every job must succeed
//! exactly once with no second attempt, and every old worker must exit 0 within its grace
//! period. The last line printed is `drill: jobs=… succeeded=… second_attempts=…
//! duplicate_results=… workers_replaced=… clean_exits=… max_drain_ms=…`.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use flotilla_shared::job::JobStatus;
use flotilla_tests::{sim_job, TestEnv};
use futures_util::{stream, StreamExt as _};
use serde_json::json;

const JOBS: usize = 1000;
const WORKERS: usize = 3;
const GRACE_S: u64 = 15;

#[tokio::main]
async fn main() -> ExitCode {
    let mut env = TestEnv::new("drill").await;
    let client = env.start_producer().await;
    let grace = GRACE_S.to_string();
    let args = ["--concurrency", "8", "--grace-s", grace.as_str()];
    let mut current: Vec<usize> = Vec::new();
    for _ in 0..WORKERS {
        current.push(env.start_worker(&args).await);
    }
    let ids: Vec<String> = stream::iter(0..JOBS)
        .map(|i| {
            let client = client.clone();
            async move {
                let mut req = sim_job(0, None);
                req.params = Some(json!({"latency_ms": 150, "jitter_ms": 300}));
                req.input = json!({"i": i});
                client
                    .submit(&req, Some(&format!("drill-{i}")))
                    .await
                    .ok()
                    .map(|s| s.response.id)
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    eprintln!("drill: {} jobs queued; rolling the workers", ids.len());

    let (mut replaced, mut clean_exits, mut max_drain) = (0, 0, Duration::ZERO);
    for slot in current.iter_mut() {
        let old = *slot;
        // Surge first (maxSurge 1, maxUnavailable 0), then terminate the old pod.
        *slot = env.start_worker(&args).await;
        let t = Instant::now();
        env.workers[old].sigterm();
        let code = env.workers[old]
            .wait_exit(Duration::from_secs(GRACE_S + 10))
            .await;
        let took = t.elapsed();
        max_drain = max_drain.max(took);
        replaced += 1;
        if code == Some(0) && took <= Duration::from_secs(GRACE_S) {
            clean_exits += 1;
        } else {
            eprintln!("drill: worker {old} exited {code:?} after {took:?}");
        }
    }

    let mut succeeded = 0;
    let mut second_attempts = 0;
    for id in &ids {
        match client.wait(id, Duration::from_secs(120)).await {
            Ok(job) => {
                succeeded += usize::from(job.status == JobStatus::Succeeded);
                second_attempts += usize::from(job.attempts > 1);
            }
            Err(e) => eprintln!("drill: {id}: {e}"),
        }
    }
    // One terminal write per job, counted from every worker's log.
    let finishes = env.finishes_per_job();
    let duplicate_results: usize = finishes.values().map(|n| n.saturating_sub(1)).sum();
    let ok = ids.len() == JOBS
        && succeeded == JOBS
        && second_attempts == 0
        && duplicate_results == 0
        && clean_exits == WORKERS;
    if !ok {
        eprintln!("drill: FAILED; logs in {}", env.dir.display());
        std::mem::forget(env);
    }
    println!(
        "drill: jobs={JOBS} succeeded={succeeded} second_attempts={second_attempts} \
         duplicate_results={duplicate_results} workers_replaced={replaced} clean_exits={clean_exits} \
         max_drain_ms={}",
        max_drain.as_millis()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
